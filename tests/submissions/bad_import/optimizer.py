import a_package_nobody_installed  # noqa: F401

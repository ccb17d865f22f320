"""Problem suites: bayesmark's own and the others (COCO's bbob functions, an organizer's objective files).

A suite whose objective needs other dependencies than the worker's pinned stack runs it in an objective
process: trusted (not sandboxed), in the suite's own locked virtual environment (environment.py), speaking
line-delimited JSON (wire.py) over stdin/stdout (objective_server.py on its side, objective_process.py on
the worker's). wire.py, objective_server.py and bbob_names.py are stdlib-only: they run in that
environment, where nothing of the project is installed.
"""

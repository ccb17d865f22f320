"""A pure-Python module shipped beside optimizer.py."""


def batch(api_config, n):
    import bayesmark.random_search as rs

    return rs.suggest_dict([], [], api_config, n_suggestions=n)

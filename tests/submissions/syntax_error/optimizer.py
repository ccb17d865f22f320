from bayesmark.abstract_optimizer import AbstractOptimizer

class Broken(AbstractOptimizer)
    pass

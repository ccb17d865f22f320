"""Labels on the study containers a worker starts: the worker's docker backend sets them, and the docker
provider reads them to sweep what a worker removed by force left behind."""

ROLE_LABEL = "bbo-arena.role"  # "sandbox" (a study's), "install" (bundled wheels), "warm" (a warm sandbox)
STUDY_LABEL = "bbo-arena.study"
ARTIFACT_LABEL = "bbo-arena.artifact"
WORKER_LABEL = "bbo-arena.worker"  # host:pid of the worker that made it, for sweeping orphans

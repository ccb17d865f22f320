"""What scoring runs on: the spec and its limits, the embedded Redis, RQ, fair dispatch, recovery of lost
jobs, the end of a score version, process helpers. Below the workers and the competition rules; above the
contract (queue_schema) and scoring (baselines)."""

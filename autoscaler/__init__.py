"""Queue-driven fleet sizing: policy, providers, daemon, simulator (see issue: Autoscaler daemon)."""

"""Short training probes on the real device: throughput and gradient noise."""

"""`make bench`: Tierstream's throughput and latency measured against this machine's raw limits."""

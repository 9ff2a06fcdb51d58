"""Peak memory: tracking, estimating, measuring and searching for the largest batch."""

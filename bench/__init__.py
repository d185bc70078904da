"""The comparative latency benchmark of the four combinations (`matrix bench`)."""

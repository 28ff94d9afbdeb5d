"""Several Ray hosts on one machine as Linux network namespaces with `tc`-limited links (root only)."""

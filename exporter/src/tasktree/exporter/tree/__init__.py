"""The task tree's rules as pure functions over rows: status lattice, rollups, staleness."""

"""Where a run's bytes live: paths and URIs, atomic parts and markers, retries, the output layout."""

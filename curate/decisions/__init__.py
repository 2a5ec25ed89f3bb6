"""Keep/drop decisions: filter predicates, rules as text, dedup, the run-level cascade."""

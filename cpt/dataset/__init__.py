"""The CPT dataset: the domain chunks DOS selects, mixed with general replay at the critical ratio (science.md §4)."""

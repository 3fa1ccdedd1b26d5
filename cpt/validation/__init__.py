"""Confirmation runs: the papers' claims re-checked on every build (cpt.validation.claims)."""

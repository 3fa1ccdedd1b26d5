"""Data selection from a scored chunk pool: Distance-to-Optimum Selection (:mod:`cpt.selection.dos`)."""

"""Who may read and write which topics: load, validate, evaluate, explain. Pure, no I/O."""

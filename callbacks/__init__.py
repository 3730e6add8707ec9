"""Lightning callbacks for catvae (diagnostics, image logging, timing)."""

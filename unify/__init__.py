"""Hash-based unification of identical files across guest roots into a shared store."""

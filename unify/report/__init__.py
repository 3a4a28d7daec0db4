"""What unification saves: measure guest roots, aggregate, render as text, JSON and HTML."""

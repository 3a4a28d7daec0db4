"""The build wing: recipe -> resolve -> fetch -> install -> configure -> image.

Generic stages live here; each distribution family is a backend package
(`debian/`, `rpm/`) that turns a recipe into a Plan and installs it."""

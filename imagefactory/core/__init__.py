"""The ground floor: helpers every wing imports (errors, progress, atomic writes, gpg,
hashing, byte units, safe paths, the manifest). Imports nothing above it."""

"""The host kernel the project owns: recipes, patches, config fragments and packaging."""

"""Model images: manifest, build from recipes, signature and hash verification."""

"""Model references: local tiny models, the skills zoo, local paths and Hub ids."""

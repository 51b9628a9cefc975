"""Model families: thin architecture definitions built from config.json."""

"""The review gate: decisions on each row's content (store), the page that takes them (app, catalog)."""

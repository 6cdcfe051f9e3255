"""An app that tries forbidden SQL through every connection it can reach."""

"""`/ui`: a read-only, server-rendered page over the specs and their retention plans.

docs/operations.md ("The /ui page") says what it shows and how it takes the API token.
"""

from backtor.api.ui.routes import router

__all__ = ["router"]

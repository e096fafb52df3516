"""Database: typed models, sessions and migrations."""

from pixmo.db.models import Base
from pixmo.db.session import Database, get_database

__all__ = ["Base", "Database", "get_database"]

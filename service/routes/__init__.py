"""One APIRouter per resource: inspection, prompts, operations (health and metrics)."""

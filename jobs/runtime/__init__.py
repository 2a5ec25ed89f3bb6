"""The runtime the entry points share: the Ray adapter, flags, presets, input listing, the
distributed decisions and score join, the part writer and the plan builders. No entry point
lives here, and no module here imports an entry point."""

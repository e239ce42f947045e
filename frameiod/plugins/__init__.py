"""The plugin host: hookspecs, the PluginManager factory, and `App`."""

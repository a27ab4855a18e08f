"""Model plugins shipped with Nerve as examples of the plugin contract (`models.plugins`); each
is a plain class that imports nothing of Nerve, as a plugin of your own package would be."""

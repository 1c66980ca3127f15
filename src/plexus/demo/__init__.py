"""``plexus demo``: a whole mesh on one machine as child processes, with sample apps written with the SDK.

``plexus.demo.provider`` and ``plexus.demo.consumer`` are the sample apps; ``plexus.demo.cluster`` starts and
stops the processes (also used by the end-to-end tests); ``plexus.demo.runner`` shows the live table.
"""

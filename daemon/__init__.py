"""The monitor daemon: watches the inbox, claims complete files, keeps the work moving."""

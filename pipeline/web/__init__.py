"""What a learner opens: the lesson player page and its script, transcripts, and SCORM packages."""

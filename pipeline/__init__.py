"""Media pipeline: audio analysis, ffmpeg, render backends, stitching."""

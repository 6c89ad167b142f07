"""Where frames come from: video files and cameras (PyAV/FFmpeg), the policy that decides
which locations may be opened, and decoding on the GPU."""

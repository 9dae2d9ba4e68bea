module roomcast-bench-ignore

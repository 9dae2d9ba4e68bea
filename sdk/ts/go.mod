module roomcast-sdk-ts-ignore

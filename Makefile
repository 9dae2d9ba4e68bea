# roomcast — common tasks. Tools are pinned and installed into ./.bin on first use.
SHELL := /bin/bash
BIN := $(CURDIR)/.bin
export PATH := $(BIN):$(PATH)

BUF_VERSION := v1.75.0
PROTOC_GEN_GO_VERSION := v1.36.12
PROTOC_GEN_GO_GRPC_VERSION := v1.5.1

.PHONY: all build test test-short generate check-generate lint tools bench fuzz-smoke clean

all: build

build:
	go build -o bin/roomcast ./cmd/roomcast

## test: the whole suite, race detector on (what CI runs)
test:
	go test -race -count=1 -timeout 20m ./...

test-short:
	go test -count=1 ./...

$(BIN)/buf:
	GOBIN=$(BIN) go install github.com/bufbuild/buf/cmd/buf@$(BUF_VERSION)
$(BIN)/protoc-gen-go:
	GOBIN=$(BIN) go install google.golang.org/protobuf/cmd/protoc-gen-go@$(PROTOC_GEN_GO_VERSION)
$(BIN)/protoc-gen-go-grpc:
	GOBIN=$(BIN) go install google.golang.org/grpc/cmd/protoc-gen-go-grpc@$(PROTOC_GEN_GO_GRPC_VERSION)

tools: $(BIN)/buf $(BIN)/protoc-gen-go $(BIN)/protoc-gen-go-grpc

## generate: regenerate gen/ from proto/
generate: tools
	rm -rf gen/roomcast
	buf generate

## check-generate: fail when gen/ is stale
check-generate: generate
	@git diff --exit-code --stat -- gen || (echo "gen/ is stale: run 'make generate' and commit" >&2; exit 1)
	@test -z "$$(git status --porcelain -- gen)" || (echo "gen/ has untracked files: run 'make generate' and commit" >&2; exit 1)

## lint: gofmt, go vet, buf lint and buf format
lint: tools
	@test -z "$$(gofmt -l $$(git ls-files '*.go' | grep -v '^gen/'))" || (gofmt -l $$(git ls-files '*.go' | grep -v '^gen/'); echo "gofmt needed" >&2; exit 1)
	go vet ./...
	buf lint
	buf format --diff --exit-code

## fuzz-smoke: run each fuzz target briefly (seed corpora live in testdata/fuzz).
## A count, not a duration: on a loaded 2-core box a time budget can end with the fuzz
## engine's own "context deadline exceeded" while a worker is mid-input.
FUZZTIME ?= 5000x
fuzz-smoke:
	go test -run XXX -fuzz '^FuzzFrames$$' -fuzztime $(FUZZTIME) ./internal/wsio
	go test -run XXX -fuzz '^FuzzUTF8Stream$$' -fuzztime $(FUZZTIME) ./internal/wsio
	go test -run XXX -fuzz '^FuzzClientCommand$$' -fuzztime $(FUZZTIME) ./node
	go test -run XXX -fuzz '^FuzzVerify$$' -fuzztime $(FUZZTIME) ./internal/jwtauth

## bench: short benchmark (roomcast, and Socket.IO + Redis when node/redis-server exist), < 5 min
bench:
	bash bench/short.sh

clean:
	rm -rf bin

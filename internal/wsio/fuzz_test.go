package wsio

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode/utf8"
)

// fuzzLimit is the fuzz servers' MaxMessageBytes: small, so the fuzzer reaches the
// limit checks.
const fuzzLimit = 1024

// fuzzHandler checks what the server delivers: every message within the limit, every
// text message valid UTF-8, and OnClose exactly once, after the last message.
type fuzzHandler struct {
	mu     sync.Mutex
	bad    []string
	closes int
	closed chan error
}

func (h *fuzzHandler) OnMessage(_ *Conn, binary bool, data []byte) {
	h.mu.Lock()
	defer h.mu.Unlock()
	switch {
	case h.closes > 0:
		h.bad = append(h.bad, "message after OnClose")
	case len(data) > fuzzLimit:
		h.bad = append(h.bad, fmt.Sprintf("message of %d bytes over the limit", len(data)))
	case !binary && !utf8.Valid(data):
		h.bad = append(h.bad, fmt.Sprintf("text message not utf-8: %q", data))
	}
}

func (h *fuzzHandler) OnClose(_ *Conn, err error) {
	h.mu.Lock()
	h.closes++
	n := h.closes
	h.mu.Unlock()
	if n == 1 {
		h.closed <- err
	}
}

type fuzzServer struct {
	url      string
	handlers chan *fuzzHandler
}

func newFuzzServer(tb testing.TB, mode Mode) *fuzzServer {
	tb.Helper()
	s, err := NewServer(Config{
		Mode: mode, MaxMessageBytes: fuzzLimit,
		PartialTimeout: 200 * time.Millisecond, CloseWait: 100 * time.Millisecond, WriteTimeout: time.Second,
		Workers: 2, Logger: slog.New(slog.DiscardHandler),
	})
	if err != nil {
		tb.Fatal(err)
	}
	fs := &fuzzServer{handlers: make(chan *fuzzHandler, 16)}
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, err := s.Upgrade(w, r, nil, nil)
		if err != nil {
			return
		}
		h := &fuzzHandler{closed: make(chan error, 1)}
		if err := c.Start(h); err != nil {
			return
		}
		fs.handlers <- h
	}))
	fs.url = hs.Listener.Addr().String()
	tb.Cleanup(func() {
		_ = s.Close()
		hs.Close()
	})
	return fs
}

const fuzzHandshake = "GET / HTTP/1.1\r\nHost: fuzz\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
	"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"

// run upgrades a fresh connection, writes stream as the client's bytes, half-closes,
// and checks the server ends the connection within a bound, with a valid close code
// if it sends one, having delivered only valid messages.
func (fs *fuzzServer) run(t *testing.T, stream []byte) {
	nc, err := net.Dial("tcp", fs.url)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	_ = nc.SetDeadline(time.Now().Add(failBound))
	if _, err := io.WriteString(nc, fuzzHandshake); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(nc)
	resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodGet})
	if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("handshake: %v %v", resp, err)
	}
	var h *fuzzHandler
	select {
	case h = <-fs.handlers:
	case <-time.After(failBound):
		t.Fatal("no server connection")
	}
	// The server may refuse the stream before it has read it all.
	_, _ = nc.Write(stream)
	_ = nc.(*net.TCPConn).CloseWrite()

	// Read what the server sends until it closes the socket.
	if code, err := readServerFrames(br); err != nil {
		t.Fatalf("server stream: %v", err)
	} else if code != 0 && code != 1005 && !validReceivedCloseCode(code) {
		t.Fatalf("server closed with code %d", code)
	}
	select {
	case <-h.closed:
	case <-time.After(failBound):
		t.Fatal("OnClose not called")
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(h.bad) > 0 {
		t.Fatal(strings.Join(h.bad, "; "))
	}
}

// readServerFrames parses server frames until EOF and returns the close code seen (0
// for none). A malformed server frame or a connection left open is an error.
func readServerFrames(br *bufio.Reader) (int, error) {
	code := 0
	for {
		var hdr [2]byte
		if _, err := io.ReadFull(br, hdr[:]); err != nil {
			return code, eofOrErr(err)
		}
		if hdr[1]&0x80 != 0 {
			return code, errors.New("server frame is masked")
		}
		n := uint64(hdr[1] & 0x7f)
		switch n {
		case 126:
			var b [2]byte
			if _, err := io.ReadFull(br, b[:]); err != nil {
				return code, eofOrErr(err)
			}
			n = uint64(binary.BigEndian.Uint16(b[:]))
		case 127:
			var b [8]byte
			if _, err := io.ReadFull(br, b[:]); err != nil {
				return code, eofOrErr(err)
			}
			n = binary.BigEndian.Uint64(b[:])
		}
		if n > 1<<20 {
			return code, fmt.Errorf("server frame of %d bytes", n)
		}
		p := make([]byte, n)
		if _, err := io.ReadFull(br, p); err != nil {
			return code, eofOrErr(err)
		}
		if hdr[0]&0x0f == opClose {
			switch {
			case n == 0:
				code = 1005
			case n == 1:
				return code, errors.New("server close frame of one byte")
			default:
				code = int(binary.BigEndian.Uint16(p))
			}
		}
	}
}

func eofOrErr(err error) error {
	var ne net.Error
	switch {
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return nil
	case errors.As(err, &ne) && ne.Timeout():
		return errors.New("server did not close the connection")
	}
	var oe *net.OpError
	if errors.As(err, &oe) {
		return nil // reset by the server
	}
	return err
}

// fuzzFrame encodes a masked client frame.
func fuzzFrame(fin bool, op byte, p []byte) []byte { return rawFrame(fin, op, p, true) }

// FuzzFrames feeds arbitrary bytes as a client's stream into real server
// connections in both read modes. Run it with
//
//	go test -run XXX -fuzz FuzzFrames -fuzztime 20s ./internal/wsio
func FuzzFrames(f *testing.F) {
	cat := func(bs ...[]byte) []byte {
		var out []byte
		for _, b := range bs {
			out = append(out, b...)
		}
		return out
	}
	l62 := []byte{0x81, 0xff, 0x40, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4}
	seeds := [][]byte{
		nil,
		fuzzFrame(true, opText, []byte("hello")),
		fuzzFrame(true, opBinary, []byte{0, 1, 2, 255}),
		cat(fuzzFrame(false, opText, []byte("frag")), fuzzFrame(true, opPing, []byte("p")), fuzzFrame(true, opContinuation, []byte("ment"))),
		cat(fuzzFrame(true, opText, []byte("a")), fuzzFrame(true, opClose, []byte{0x03, 0xe8, 'b', 'y', 'e'})),
		fuzzFrame(true, opPing, []byte("ping")),
		fuzzFrame(true, opPong, nil),
		fuzzFrame(true, opText, []byte{0xce, 0xba, 0xff}),
		fuzzFrame(true, opClose, []byte{0x03}),
		fuzzFrame(true, opClose, []byte{0x00, 0x00}),
		fuzzFrame(true, 0x3, []byte("reserved")),
		append([]byte{0xc1}, fuzzFrame(true, opText, []byte("x"))[1:]...), // RSV1
		rawFrame(true, opText, []byte("unmasked"), false),
		fuzzFrame(true, opText, make([]byte, fuzzLimit+1)),
		l62,
		fuzzFrame(false, opText, []byte("never finished")),
		fuzzFrame(true, opContinuation, []byte("nothing to continue")),
		cat(fuzzFrame(false, opText, []byte("a")), fuzzFrame(true, opText, []byte("b"))),
	}
	for _, s := range seeds {
		f.Add(s)
	}
	servers := make([]*fuzzServer, 0, len(modes))
	for _, m := range modes {
		servers = append(servers, newFuzzServer(f, m))
	}
	f.Fuzz(func(t *testing.T, stream []byte) {
		if len(stream) > 64<<10 {
			return
		}
		for _, fs := range servers {
			fs.run(t, stream)
		}
	})
}

// FuzzUTF8Stream checks the incremental UTF-8 check against utf8.Valid: fed in any
// pieces, it must never refuse valid text, must refuse invalid text by the end (or
// leave an incomplete code point over), and must not refuse later than the piece that
// completes the first invalid sequence.
func FuzzUTF8Stream(f *testing.F) {
	for _, s := range []string{"", "hello", "κόσμε", "\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80edited",
		"\xf4\x90\x80\x80", "\xf0\x9f\x98\x80", "\xed\x9f\xbf", "\xef\xbf\xbd", "\xc0\xaf", "\xe0\x80"} {
		f.Add([]byte(s), uint8(1), uint8(3))
	}
	f.Fuzz(func(t *testing.T, text []byte, a, b uint8) {
		var u utf8Stream
		ok := true
		sizes := []int{int(a%7) + 1, int(b%7) + 1}
		for i, p := 0, text; len(p) > 0; i++ {
			n := min(sizes[i%2], len(p))
			if !u.feed(p[:n]) {
				ok = false
				// Everything up to here must indeed be invalid: no valid text has
				// this prefix.
				if utf8.Valid(text) {
					t.Fatalf("refused valid text %q", text)
				}
				break
			}
			p = p[n:]
		}
		if ok && u.n == 0 && !utf8.Valid(text) {
			t.Fatalf("accepted invalid text %q", text)
		}
		if ok && u.n > 0 && utf8.Valid(text) {
			t.Fatalf("valid text %q left %d bytes over", text, u.n)
		}
	})
}

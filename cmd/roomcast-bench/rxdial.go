package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha1"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// The receive engine reads the socket itself, so the connection's setup must not leave
// any byte in someone else's buffer (gorilla's reader may read past the handshake or a
// reply). rxSetup does the HTTP/1.1 Upgrade and the protocol's setup exchange on the
// raw TCP connection and parses every byte it reads with the wsIn the engine then
// takes over: bytes read past the last awaited reply stay in wsIn.pend and are the
// engine's first input.

// wsGUID is RFC 6455's key-accept suffix.
const wsGUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

// setupTimeout bounds a connection's handshake and setup exchange.
const setupTimeout = 30 * time.Second

// rxSetup is a connection during its synchronous setup, before the engine owns it.
type rxSetup struct {
	nc     net.Conn
	in     wsIn
	target string
	buf    []byte
	wbuf   []byte

	// The awaited message, set by await.
	match func(msg []byte) (done bool, err error)
	// unwatch stops the context watch that ends a blocked read or write on cancel.
	unwatch func() bool
}

// dialRaw opens a TCP connection to rawURL from source address src and performs the
// WebSocket handshake (asking for subprotocol when not empty). The caller owns the
// result and ends it with detach or abort; until then a cancelled ctx or the setup's
// deadline ends any read or write.
func dialRaw(ctx context.Context, rawURL string, src net.Addr, subprotocol, target string) (*rxSetup, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, err
	}
	if u.Scheme != "ws" && u.Scheme != "http" {
		return nil, fmt.Errorf("dial %s: only ws:// (plain TCP) is supported", rawURL)
	}
	host := u.Host
	if u.Port() == "" {
		host = net.JoinHostPort(u.Hostname(), "80")
	}
	nd := &net.Dialer{LocalAddr: src, Timeout: 15 * time.Second}
	nc, err := nd.DialContext(ctx, "tcp", host)
	if err != nil {
		return nil, err
	}
	s := &rxSetup{nc: nc, target: target, buf: make([]byte, 4096)}
	_ = nc.SetDeadline(time.Now().Add(setupTimeout))
	s.unwatch = context.AfterFunc(ctx, func() { _ = nc.SetDeadline(time.Unix(1, 0)) })
	if err := s.handshake(u, subprotocol); err != nil {
		s.abort()
		return nil, fmt.Errorf("websocket handshake with %s: %w", rawURL, err)
	}
	return s, nil
}

func (s *rxSetup) handshake(u *url.URL, subprotocol string) error {
	var k [16]byte
	_, _ = rand.Read(k[:])
	key := base64.StdEncoding.EncodeToString(k[:])
	var req strings.Builder
	fmt.Fprintf(&req, "GET %s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"+
		"Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n", u.RequestURI(), u.Host, key)
	if subprotocol != "" {
		fmt.Fprintf(&req, "Sec-WebSocket-Protocol: %s\r\n", subprotocol)
	}
	req.WriteString("\r\n")
	if _, err := s.nc.Write([]byte(req.String())); err != nil {
		return err
	}
	// Read until the end of the response head; whatever follows it is WebSocket data.
	var head []byte
	for {
		n, err := s.nc.Read(s.buf)
		head = append(head, s.buf[:n]...)
		if i := bytes.Index(head, []byte("\r\n\r\n")); i >= 0 {
			rest := head[i+4:]
			head = head[:i+4]
			if err := checkUpgrade(head, key, subprotocol); err != nil {
				return err
			}
			s.in.keep(rest)
			return nil
		}
		if err != nil {
			return err
		}
		if len(head) > 16<<10 {
			return errors.New("response head over 16 KiB")
		}
	}
}

// checkUpgrade validates the server's 101 response to the key.
func checkUpgrade(head []byte, key, subprotocol string) error {
	resp, err := http.ReadResponse(bufio.NewReader(bytes.NewReader(head)), nil)
	if err != nil {
		return err
	}
	_ = resp.Body.Close()
	if resp.StatusCode != http.StatusSwitchingProtocols {
		return fmt.Errorf("status %s", resp.Status)
	}
	h := resp.Header
	if !strings.EqualFold(h.Get("Upgrade"), "websocket") || !headerHasToken(h, "Connection", "upgrade") {
		return errors.New("no Upgrade: websocket / Connection: upgrade in the response")
	}
	sum := sha1.Sum([]byte(key + wsGUID))
	if h.Get("Sec-WebSocket-Accept") != base64.StdEncoding.EncodeToString(sum[:]) {
		return errors.New("bad Sec-WebSocket-Accept")
	}
	if e := h.Get("Sec-WebSocket-Extensions"); e != "" {
		return fmt.Errorf("unrequested extension %q", e)
	}
	if p := h.Get("Sec-WebSocket-Protocol"); p != "" && p != subprotocol {
		return fmt.Errorf("unrequested subprotocol %q", p)
	}
	return nil
}

func headerHasToken(h http.Header, name, token string) bool {
	for _, v := range h.Values(name) {
		for t := range strings.SplitSeq(v, ",") {
			if strings.EqualFold(strings.TrimSpace(t), token) {
				return true
			}
		}
	}
	return false
}

// send writes one masked text message.
func (s *rxSetup) send(msg []byte) error {
	s.wbuf = appendClientFrame(s.wbuf[:0], wsText, msg)
	_, err := s.nc.Write(s.wbuf)
	return err
}

// await reads until match reports done for a message, answering app-level and
// WebSocket pings on the way; other messages are skipped. Bytes after the matched
// message are kept in s.in.
func (s *rxSetup) await(match func(msg []byte) (done bool, err error)) error {
	s.match = match
	defer func() { s.match = nil }()
	if s.in.buffered() {
		if done, err := s.in.feed(nil, s); err != nil || done {
			return err
		}
	}
	for {
		n, err := s.nc.Read(s.buf)
		if n > 0 {
			if done, ferr := s.in.feed(s.buf[:n], s); ferr != nil || done {
				return ferr
			}
		}
		if err != nil {
			return err
		}
	}
}

// wsFrame implements wsHandler for the setup exchange.
func (s *rxSetup) wsFrame(op byte, payload []byte) (bool, error) {
	switch op {
	case wsText, wsBinary:
		if reply := pingReply(s.target, payload); reply != nil {
			return false, s.send(reply)
		}
		return s.match(payload)
	case wsPing:
		s.wbuf = appendClientFrame(s.wbuf[:0], wsPong, payload)
		_, err := s.nc.Write(s.wbuf)
		return false, err
	case wsClose:
		s.wbuf = appendClientFrame(s.wbuf[:0], wsClose, closeReply(payload))
		_, _ = s.nc.Write(s.wbuf)
		return false, fmt.Errorf("%w during setup (%s)", errRxClosed, closeText(payload))
	}
	return false, nil
}

// closeText describes a close frame's payload for an error.
func closeText(payload []byte) string {
	if len(payload) < 2 {
		return "no status"
	}
	return fmt.Sprintf("%d %s", int(payload[0])<<8|int(payload[1]), payload[2:])
}

// detach hands the socket over: it returns a duplicate of the connection's descriptor
// (non-blocking, close-on-exec) and closes the net.Conn, which removes the original
// from Go's poller (the duplicate keeps the socket open). The engine then alone reads
// and writes it, and Go's poller is not woken for its traffic.
func (s *rxSetup) detach() (int, error) {
	s.unwatch()
	defer s.nc.Close()
	sc, ok := s.nc.(syscall.Conn)
	if !ok {
		return -1, errors.New("not a socket")
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return -1, err
	}
	fd, derr := -1, error(nil)
	if err := rc.Control(func(s uintptr) { fd, derr = unix.FcntlInt(s, unix.F_DUPFD_CLOEXEC, 0) }); err != nil {
		return -1, err
	}
	if derr != nil {
		return -1, fmt.Errorf("dup: %w", derr)
	}
	return fd, nil
}

// abort closes a connection whose setup failed.
func (s *rxSetup) abort() {
	s.unwatch()
	_ = s.nc.Close()
}

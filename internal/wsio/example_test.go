package wsio_test

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"

	"github.com/gorilla/websocket"

	"github.com/roomcast/roomcast/internal/wsio"
)

// echo answers every message with the same message.
type echo struct{ closed chan error }

func (e echo) OnMessage(c *wsio.Conn, binary bool, data []byte) {
	m, err := wsio.NewMessage(binary, data) // copies data: it is only valid during the call
	if err != nil {
		return
	}
	if err := c.Send(m); err == wsio.ErrQueueFull {
		c.CloseNow(4001, "slow")
	}
}

func (e echo) OnClose(c *wsio.Conn, err error) { e.closed <- err }

func Example() {
	s, err := wsio.NewServer(wsio.Config{})
	if err != nil {
		panic(err)
	}
	defer s.Close()
	h := echo{closed: make(chan error, 1)}
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, err := s.Upgrade(w, r, &websocket.Upgrader{}, nil)
		if err != nil {
			return // gorilla has answered with an HTTP error
		}
		_ = c.Start(h) // and return: the handler's goroutine and buffers are freed
	}))
	defer hs.Close()

	ws, _, err := websocket.DefaultDialer.Dial("ws"+strings.TrimPrefix(hs.URL, "http"), nil)
	if err != nil {
		panic(err)
	}
	_ = ws.WriteMessage(websocket.TextMessage, []byte("hello"))
	_, got, _ := ws.ReadMessage()
	fmt.Println(string(got))
	_ = ws.WriteMessage(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseNormalClosure, "bye"))
	fmt.Println(<-h.closed)
	ws.Close()
	// Output:
	// hello
	// websocket: close 1000 (normal): bye
}

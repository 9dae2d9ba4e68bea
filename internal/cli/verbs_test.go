package cli

import (
	"context"
	"strings"
	"testing"

	pb "github.com/roomcast/roomcast/gen/roomcast/v1"
)

// stuckPager is a ControlService whose every page names itself as the next page,
// as a broken server might.
type stuckPager struct {
	pb.UnimplementedControlServiceServer
}

func (stuckPager) ListRooms(context.Context, *pb.ListRoomsRequest) (*pb.ListRoomsResponse, error) {
	return &pb.ListRoomsResponse{Rooms: []*pb.RoomSummary{{Name: "chat:a"}}, NextPageToken: "same"}, nil
}

func (stuckPager) ListNodes(context.Context, *pb.ListNodesRequest) (*pb.ListNodesResponse, error) {
	return &pb.ListNodesResponse{Nodes: []*pb.NodeInfo{{Name: "n1"}}, NextPageToken: "same"}, nil
}

// A verb that follows pages stops with a server error, instead of looping for
// ever, when the server hands back the page token it was given.
func TestRepeatedPageTokenIsAServerError(t *testing.T) {
	addr := serveControl(t, stuckPager{}, nil)
	for _, verb := range [][]string{{"rooms", "--all"}, {"nodes"}} {
		t.Run(verb[0], func(t *testing.T) {
			res := runCLI(context.Background(), t, "", append([]string{"--addr", addr}, verb...)...)
			if res.code != ExitServerError || !strings.Contains(res.stderr, "server repeated the same page token") {
				t.Errorf("code %d, stderr %q: want %d and a repeated page token error", res.code, res.stderr, ExitServerError)
			}
		})
	}
	// Without --all one page is asked for, and the next token is only a hint.
	res := runCLI(context.Background(), t, "", "--addr", addr, "rooms", "--page-token", "same")
	if res.code != 0 || !strings.Contains(res.stdout, "chat:a") || !strings.Contains(res.stderr, "--page-token same") {
		t.Errorf("code %d, stdout %q, stderr %q: want one page and a hint", res.code, res.stdout, res.stderr)
	}
}

// The peer of nats_service_test: a NATS client that is not herald (nats.go), as requester and as
// responder of the service bridge's tests. Built by tests/nats/CMakeLists.txt in GOPATH mode from
// Debian's golang-github-nats-io-go-nats-dev, nothing downloaded.
//
//	service_peer request URL SUBJECT PAYLOAD TIMEOUT_MS
//	    One nc.Request; prints one line:
//	      ok PAYLOAD                  a reply with data
//	      service-error CODE TEXT     a reply with the Nats-Service-Error headers
//	      no-responders               nats.ErrNoResponders
//	      timeout                     nats.ErrTimeout
//	    and "header NAME VALUE" lines for headers of a reply starting with "Herald-".
//	service_peer respond URL SUBJECT
//	    Answers SUBJECT until stdin closes: "A B" -> the product A*B; "fail" -> an empty reply with
//	    Nats-Service-Error "multiplication refused" and code 422; "echo-header" -> the value of
//	    the request's "Herald-Trace" header. Prints "ready" once the server knows the
//	    subscription, and "answered N" when it exits.
package main

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
)

func main() {
	if len(os.Args) < 4 {
		fmt.Fprintln(os.Stderr, "usage: service_peer request|respond URL SUBJECT ...")
		os.Exit(2)
	}
	nc, err := nats.Connect(os.Args[2])
	if err != nil {
		fmt.Fprintln(os.Stderr, "service_peer: connect:", err)
		os.Exit(1)
	}
	defer nc.Close()
	switch os.Args[1] {
	case "request":
		request(nc, os.Args[3:])
	case "respond":
		respond(nc, os.Args[3])
	default:
		fmt.Fprintln(os.Stderr, "service_peer: unknown mode", os.Args[1])
		os.Exit(2)
	}
}

func request(nc *nats.Conn, args []string) {
	if len(args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: service_peer request URL SUBJECT PAYLOAD TIMEOUT_MS")
		os.Exit(2)
	}
	ms, err := strconv.Atoi(args[2])
	if err != nil {
		fmt.Fprintln(os.Stderr, "service_peer: timeout:", err)
		os.Exit(2)
	}
	msg := nats.NewMsg(args[0])
	msg.Data = []byte(args[1])
	msg.Header.Set("Herald-Trace", "from-go")
	reply, err := nc.RequestMsg(msg, time.Duration(ms)*time.Millisecond)
	switch {
	case errors.Is(err, nats.ErrNoResponders):
		fmt.Println("no-responders")
		return
	case errors.Is(err, nats.ErrTimeout):
		fmt.Println("timeout")
		return
	case err != nil:
		fmt.Fprintln(os.Stderr, "service_peer: request:", err)
		os.Exit(1)
	}
	if text := reply.Header.Get("Nats-Service-Error"); text != "" {
		fmt.Printf("service-error %s %s\n", reply.Header.Get("Nats-Service-Error-Code"), text)
	} else {
		fmt.Printf("ok %s\n", reply.Data)
	}
	for name, values := range reply.Header {
		if strings.HasPrefix(name, "Herald-") {
			fmt.Printf("header %s %s\n", name, values[0])
		}
	}
}

func respond(nc *nats.Conn, subject string) {
	answered := 0
	_, err := nc.Subscribe(subject, func(m *nats.Msg) {
		answered++
		reply := nats.NewMsg(m.Reply)
		text := string(m.Data)
		switch {
		case text == "fail":
			reply.Header.Set("Nats-Service-Error", "multiplication refused")
			reply.Header.Set("Nats-Service-Error-Code", "422")
		case text == "echo-header":
			reply.Data = []byte(m.Header.Get("Herald-Trace"))
		default:
			var a, b int64
			if _, err := fmt.Sscan(text, &a, &b); err != nil {
				reply.Header.Set("Nats-Service-Error", "cannot read \""+text+"\"")
				reply.Header.Set("Nats-Service-Error-Code", "400")
			} else {
				reply.Data = []byte(strconv.FormatInt(a*b, 10))
			}
		}
		if err := m.RespondMsg(reply); err != nil {
			fmt.Fprintln(os.Stderr, "service_peer: respond:", err)
		}
	})
	if err == nil {
		err = nc.Flush()
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "service_peer: subscribe:", err)
		os.Exit(1)
	}
	fmt.Println("ready")
	// The callback runs on the client's goroutine, one message at a time: `answered` needs no lock.
	in := bufio.NewReader(os.Stdin)
	for {
		if _, err := in.ReadString('\n'); err != nil {
			break
		}
	}
	nc.Drain()
	for nc.IsDraining() {
		time.Sleep(time.Millisecond)
	}
	fmt.Println("answered", answered)
}

// The throwaway cluster's bridge between the host's loopback and the node's network namespace
// (tests only; stdlib only). Unix sockets are files, so they cross network namespaces:
//
//	node-proxy forward LISTEN DIAL   copy each connection: LISTEN and DIAL are tcp:HOST:PORT or unix:PATH
//	node-proxy connect unix:PATH     an HTTP CONNECT proxy (the API server's egress to the node: logs,
//	                                 exec, port-forward, pod and service proxy); dials from its netns
package main

import (
	"bufio"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"strings"
	"time"
)

func main() {
	if len(os.Args) < 3 {
		log.Fatal("usage: node-proxy forward LISTEN DIAL | node-proxy connect unix:PATH")
	}
	l := listen(os.Args[2])
	switch {
	case os.Args[1] == "forward" && len(os.Args) == 4:
		network, addr := split(os.Args[3])
		serve(l, func(c net.Conn) {
			up, err := net.DialTimeout(network, addr, 10*time.Second)
			if err != nil {
				log.Print(err)
				c.Close()
				return
			}
			pipe(c, up)
		})
	case os.Args[1] == "connect":
		serve(l, connect)
	default:
		log.Fatal("usage: node-proxy forward LISTEN DIAL | node-proxy connect unix:PATH")
	}
}

func split(spec string) (string, string) {
	network, addr, ok := strings.Cut(spec, ":")
	if !ok || (network != "tcp" && network != "unix") {
		log.Fatalf("%q: want tcp:HOST:PORT or unix:PATH", spec)
	}
	return network, addr
}

func listen(spec string) net.Listener {
	network, addr := split(spec)
	if network == "unix" {
		os.Remove(addr)
	}
	l, err := net.Listen(network, addr)
	if err != nil {
		log.Fatal(err)
	}
	return l
}

func serve(l net.Listener, handle func(net.Conn)) {
	for {
		c, err := l.Accept()
		if err != nil {
			log.Fatal(err)
		}
		go handle(c)
	}
}

func connect(c net.Conn) {
	br := bufio.NewReader(c)
	req, err := http.ReadRequest(br)
	if err != nil || req.Method != http.MethodConnect {
		io.WriteString(c, "HTTP/1.1 405 Method Not Allowed\r\n\r\n")
		c.Close()
		return
	}
	up, err := net.DialTimeout("tcp", req.Host, 10*time.Second)
	if err != nil {
		io.WriteString(c, "HTTP/1.1 502 Bad Gateway\r\n\r\n")
		c.Close()
		return
	}
	io.WriteString(c, "HTTP/1.1 200 Connection established\r\n\r\n")
	if n := br.Buffered(); n > 0 { // bytes the client sent after the request
		b, _ := br.Peek(n)
		up.Write(b)
	}
	pipe(c, up)
}

func pipe(a, b net.Conn) {
	done := make(chan struct{}, 2)
	cp := func(dst, src net.Conn) {
		io.Copy(dst, src)
		if t, ok := dst.(interface{ CloseWrite() error }); ok {
			t.CloseWrite()
		}
		done <- struct{}{}
	}
	go cp(a, b)
	go cp(b, a)
	<-done
	<-done
	a.Close()
	b.Close()
}

// Start the webtorrent bittorrent-tracker server on the loopback interface for tests/realworld.py.
//
// HTTP and UDP over IPv4 listen on 127.0.0.1 and UDP over IPv6 on ::1, each on a port the OS
// picks. Once all three listen, one JSON line with the ports goes to stdout:
// {"http": PORT, "udp": PORT, "udp6": PORT}. Warnings and errors go to stderr. The process
// runs until it gets SIGTERM or SIGINT.
//
// Only the server module is imported, because the package root also loads the client and its
// WebRTC dependency, which the tests do not install.
import Server from 'bittorrent-tracker/server'

const server = new Server({ http: true, udp: true, ws: false, stats: false, trustProxy: false })

server.on('warning', (error) => { console.error(`warning: ${error.message}`) })
server.on('error', (error) => {
  console.error(`error: ${error.message}`)
  process.exit(1)
})

server.listen(0, { http: '127.0.0.1', udp: '127.0.0.1', udp6: '::1' }, () => {
  const ports = {
    http: server.http.address().port,
    udp: server.udp4.address().port,
    udp6: server.udp6.address().port
  }
  process.stdout.write(JSON.stringify(ports) + '\n')
})

for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, () => { server.close(() => process.exit(0)) })
}

# TLS in the engine (rustls, issue 6): listeners adopted with
# listen_fd(..., tls => 1), configured by the ssl_* options, and the `tls`
# scope extension of PAGI-SPEC 4. A test CA, a server certificate (SAN
# DNS:localhost, IP:127.0.0.1) and client certificates are made at test time
# with the openssl command. The engine is driven directly, as t/native-api.t
# does: this file plays the Perl side (drain_events / commands) and the
# clients: curl, `openssl s_client` and IO::Socket::SSL.
#
# Skips when openssl, IO::Socket::SSL or (for one subtest) curl is missing,
# except under CI=true where that is a failure.
use strict;
use warnings;
use Test::More;
use FindBin;
use lib "$FindBin::Bin/lib";
use PAGI::Test::Server qw(parse_responses);    # its import sets the alarm bounding this file
use PAGI::Test::Engine qw(new_listener pump_until take count_kind client read_until get_request);
use PAGI::Test::WebSocket qw(build_frame parse_frames accept_key random_key OP_TEXT OP_CLOSE);
use PAGI::Server::Native qw(:events);
use PAGI::Test::PKI qw(need_tls_tools);
use Digest::MD5 qw(md5_hex);
use IO::Select;
use Time::HiRes qw(time sleep);

my $CI = ($ENV{CI} // '') eq 'true';
$SIG{PIPE} = 'IGNORE';    # a refused client may write to a closed connection

sub have_command {
    my ($name) = @_;
    return scalar grep { -x "$_/$name" } split /:/, $ENV{PATH} // '';
}

need_tls_tools();
IO::Socket::SSL->import('SSL_VERIFY_NONE');

# --- Certificates ------------------------------------------------------------

my $pki = PAGI::Test::PKI->new;
my $dir = $pki->dir;
sub openssl { $pki->openssl(@_) }
sub make_ca { $pki->ca(@_) }
sub make_leaf {
    my ($name, $subject, $ext, $ca, $serial) = @_;
    $pki->leaf($name, $subject, profile => $ext, ca => $ca, serial => $serial);
}

sub slurp { my ($path) = @_; open my $fh, '<:raw', $path or die "$path: $!"; local $/; return scalar <$fh> }
sub spew  { my ($path, $data) = @_; open my $fh, '>:raw', $path or die "$path: $!"; print {$fh} $data; close $fh or die "$path: $!" }

make_ca('ca', 'PAGI Test CA');
make_ca('rogue-ca', 'Rogue CA');
make_leaf('server', '/CN=localhost', 'server', 'ca', 2);
make_leaf('client', '/O=PAGI Tests/CN=pagi-test-client', 'client', 'ca', 3);
make_leaf('rogue', '/CN=rogue-client', 'client', 'rogue-ca', 4);
openssl('genpkey', '-algorithm', 'EC', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-out', "$dir/other.key");

my $CA          = "$dir/ca.pem";
my $SERVER_CERT = "$dir/server.pem";
my $SERVER_KEY  = "$dir/server.key";
my $SERVER_PEM  = slurp($SERVER_CERT);
my $CLIENT_PEM  = slurp("$dir/client.pem");
my $CA_PEM      = slurp($CA);
# The client presents its chain: its certificate, then the CA's.
spew("$dir/client-chain.pem", $CLIENT_PEM . $CA_PEM);
like($SERVER_PEM, qr/\A-----BEGIN CERTIFICATE-----\n/, 'test certificates made with openssl');

# --- Engine and clients ------------------------------------------------------

# tls_engine(%engine_options) → { engine, port, plain_port, select, events }:
# a started engine with a TLS listener (and a cleartext one when `plain`).
sub tls_engine {
    my (%o) = @_;
    my $plain = delete $o{plain};
    my $engine = PAGI::Server::Native->new(ssl_cert_file => $SERVER_CERT, ssl_key_file => $SERVER_KEY, %o);
    my $listener = new_listener();
    $engine->listen_fd($listener, tls => 1);
    my $plain_listener;
    if ($plain) {
        $plain_listener = new_listener();
        $engine->listen_fd($plain_listener);
    }
    $engine->start;
    open my $wake, '<&', $engine->fd or die "dup: $!";
    return { engine => $engine, listener => $listener, port => $listener->sockport,
             plain_port => $plain_listener && $plain_listener->sockport,
             select => IO::Select->new($wake), wake => $wake, events => [] };
}

# The croak of `start` for these options, or undef when it started.
sub start_error {
    my (%o) = @_;
    my $engine = PAGI::Server::Native->new(%o);
    $engine->listen_fd(new_listener(), tls => 1);
    return undef if eval { $engine->start; 1 } && do { $engine->shutdown(0); 1 };
    return $@;
}

sub stop_engine {
    my ($s) = @_;
    $s->{engine}->shutdown(0.5);
    ok(pump_until($s, sub { count_kind($_[0], EV_STOPPED) }), 'engine stopped');
}

# The next request's event, or undef when none arrives within $timeout.
sub next_request {
    my ($s, $timeout) = @_;
    pump_until($s, sub { count_kind($_[0], EV_REQUEST) }, $timeout) or return;
    my ($ev) = take($s, EV_REQUEST);
    return $ev;
}

# Answers the next request with 200 and $body; returns its scope (undef if none came).
sub answer {
    my ($s, $body, $timeout) = @_;
    my $ev = next_request($s, $timeout) or return;
    $s->{engine}->respond_full($ev->[1], 200, [ [ 'content-type', 'text/plain' ] ], $body // 'ok');
    $s->{engine}->flush;
    return $ev->[2];
}

# ssl_client($port, %IO::Socket::SSL options) → ($socket, $error): verifies the
# server against the test CA by default.
sub ssl_client {
    my ($port, %o) = @_;
    my $sock = IO::Socket::SSL->new(
        PeerHost => '127.0.0.1', PeerPort => $port, Timeout => 5,
        SSL_ca_file => $CA, SSL_verifycn_scheme => 'http', SSL_verifycn_name => '127.0.0.1',
        %o,
    );
    return ($sock, $sock ? undef : ($IO::Socket::SSL::SSL_ERROR || $@ || 'failed'));
}

# Reads decrypted bytes until $done->($buf), EOF, a TLS error, or $timeout.
# Returns ($buf, $closed, $error). The socket is non-blocking meanwhile, so a
# record that carries no application data (a session ticket) cannot block.
# IO::Socket::SSL reports a fatal alert received while reading as a plain EOF
# (sysread returns 0, $SSL_ERROR empty); the alert is only in OpenSSL's error
# queue, so $error is read from there too.
sub ssl_read_until {
    my ($sock, $done, $timeout) = @_;
    my $sel = IO::Select->new($sock);
    my $deadline = time + ($timeout // 5);
    my ($buf, $closed, $error) = ('', 0, undef);
    Net::SSLeay::ERR_clear_error();
    $sock->blocking(0);
    while (!$done->($buf)) {
        my $left = $deadline - time;
        last if $left <= 0;
        next unless $sock->pending || $sel->can_read($left);
        my $n = sysread $sock, $buf, 65536, length $buf;
        next if !defined $n && ($!{EAGAIN} || $!{EWOULDBLOCK});
        if (!$n) {
            $closed = 1;
            $error = join '; ', grep { length } ($IO::Socket::SSL::SSL_ERROR // ''), openssl_errors(),
                (!defined $n ? "$!" : ());
            $error = undef unless length $error;
            last;
        }
    }
    $sock->blocking(1) if $sock->opened;
    return ($buf, $closed, $error);
}

# Drains OpenSSL's error queue into readable strings.
sub openssl_errors {
    my @errors;
    while (my $code = Net::SSLeay::ERR_get_error()) { push @errors, Net::SSLeay::ERR_error_string($code) }
    return @errors;
}

sub complete_response {
    my ($r) = parse_responses($_[0]);
    return $r && !$r->{garbage} && !$r->{incomplete} ? $r : undef;
}

sub ssl_response {
    my ($sock, $timeout) = @_;
    my ($buf) = ssl_read_until($sock, \&complete_response, $timeout);
    return complete_response($buf);
}

# One GET over a fresh TLS connection, answered by `answer`; returns
# ({scope, response, socket}, $error). $error is the client's handshake error.
sub tls_get {
    my ($s, $path, %ssl) = @_;
    my ($sock, $err) = ssl_client($s->{port}, %ssl);
    return (undef, $err) unless $sock;
    print {$sock} get_request($path);
    my $scope = answer($s, "hello $path");
    my $res = $scope && ssl_response($sock);
    return ({ scope => $scope, response => $res, socket => $sock }, undef);
}

# A client the server must refuse: the handshake fails at connect, or (TLS 1.3
# client authentication is checked after the client's Finished) the first
# read fails. Either way the client sees the TLS alert matching $alert (a
# timeout, a refused connection or a dead server do not match), no request
# reaches the app, and the server then still serves a good client (one made
# with %$good, IO::Socket::SSL options).
sub refused {
    my ($s, $name, $alert, $bad, $good) = @_;
    subtest $name => sub {
        my ($sock, $err) = ssl_client($s->{port}, %{ $bad // {} });
        if ($sock) {
            # No request is written: unread request bytes would make the
            # server's close a reset, which can discard the alert in flight.
            my ($buf, $closed, $read_err) = ssl_read_until($sock, sub { 0 }, 5);
            is($buf, '', 'no response bytes');
            ok($closed, 'the connection is closed by the server');
            like($read_err // 'EOF without an alert', $alert, 'the first read fails with the expected alert');
        }
        else {
            like($err, $alert, 'the handshake fails at connect with the expected alert');
        }
        ok(!pump_until($s, sub { count_kind($_[0], EV_REQUEST) }, 0.3), 'no request reached the app');
        my ($r, $get_err) = tls_get($s, '/after-refusal', %{ $good // {} });
        is($r && $r->{response} && $r->{response}{body}, 'hello /after-refusal',
            'the server still serves a good client afterwards') or diag($get_err // 'no response');
    };
}

my %TLS_KEYS = map { $_ => 1 } qw(server_cert client_cert_chain client_cert_name client_cert_error tls_version cipher_suite);

# OpenSSL cipher names → IANA ids, to compare what both ends negotiated.
my %IANA = (
    'TLS_AES_128_GCM_SHA256'        => 0x1301, 'TLS_AES_256_GCM_SHA384' => 0x1302,
    'TLS_CHACHA20_POLY1305_SHA256'  => 0x1303,
    'ECDHE-ECDSA-AES128-GCM-SHA256' => 0xC02B, 'ECDHE-ECDSA-AES256-GCM-SHA384' => 0xC02C,
    'ECDHE-ECDSA-CHACHA20-POLY1305' => 0xCCA9,
);

# --- Tests ---------------------------------------------------------------------

subtest '(a) curl over HTTPS: scheme https, TLS 1.3 by default, the tls extension' => sub {
    unless (have_command('curl')) {
        return fail('CI=true and curl is not installed: ./setup.sh installs it') if $CI;
        plan skip_all => 'curl not installed';
    }
    my $s = tls_engine(plain => 1);
    my $pid = open(my $curl, '-|', 'curl', '-sS', '--max-time', '10', '--cacert', $CA,
        '-w', '\n%{http_code}', "https://127.0.0.1:$s->{port}/via-curl") or die "curl: $!";
    my $scope = answer($s, "hello curl\n", 10);
    ok($scope, 'the request reached the app') or return;
    my $out = do { local $/; <$curl> };
    close $curl;
    is($?, 0, 'curl exits 0');
    is($out, "hello curl\n\n200", 'curl got the body with status 200');

    is($scope->{type}, 'http', 'http scope');
    is($scope->{scheme}, 'https', 'scheme https');
    is($scope->{path}, '/via-curl', 'path');
    is_deeply($scope->{server}, [ '127.0.0.1', $s->{port} ], 'server is the TLS listener');
    my $tls = $scope->{extensions}{tls};
    is(ref $tls, 'HASH', 'extensions.tls is a hash') or return;
    is_deeply([ sort keys %$tls ], [ sort keys %TLS_KEYS ], 'with exactly the fields of PAGI-SPEC 4');
    is($tls->{tls_version}, 0x0304, 'tls_version 0x0304 (TLS 1.3) by default');
    ok(grep({ $tls->{cipher_suite} == $_ } 0x1301, 0x1302, 0x1303),
        sprintf('cipher_suite is a TLS 1.3 suite (0x%04x)', $tls->{cipher_suite} // 0));
    is($tls->{server_cert}, $SERVER_PEM, 'server_cert is the PEM of the server certificate');
    is_deeply($tls->{client_cert_chain}, [], 'no client certificate chain');
    is($tls->{client_cert_name}, undef, 'client_cert_name undef');
    is($tls->{client_cert_error}, undef, 'client_cert_error undef');

    # The same engine's cleartext listener: no tls extension at all.
    my $sock = client($s->{plain_port});
    print {$sock} get_request('/plain');
    my $plain = answer($s, 'plain');
    ok($plain, 'a cleartext request on the second listener') or return;
    is($plain->{scheme}, 'http', 'its scheme is http');
    ok(!exists $plain->{extensions}{tls}, 'and it has no tls extension');
    stop_engine($s);
};

subtest '(b) ssl_min_version: TLS 1.2 clients' => sub {
    my $s = tls_engine(ssl_min_version => 'TLSv1_3');
    refused($s, 'a TLS 1.2 client against ssl_min_version TLSv1_3', qr/alert protocol version/,
        { SSL_version => 'TLSv1_2' });
    my ($r, $err) = tls_get($s, '/v13');
    ok($r && $r->{scope}, 'a TLS 1.3 client still gets in') or diag($err);
    is($r && $r->{scope}{extensions}{tls}{tls_version}, 0x0304, 'with TLS 1.3');
    stop_engine($s);

    $s = tls_engine();
    ($r, $err) = tls_get($s, '/v12', SSL_version => 'TLSv1_2');
    ok($r && $r->{scope}, 'a TLS 1.2 client is served by default') or do { diag($err); return };
    is($r->{socket}->get_sslversion, 'TLSv1_2', 'the client negotiated TLS 1.2');
    is($r->{response} && $r->{response}{body}, 'hello /v12', 'and got the response');
    my $tls = $r->{scope}{extensions}{tls};
    is($tls->{tls_version}, 0x0303, 'tls_version 0x0303');
    my $cipher = $r->{socket}->get_cipher;
    is($tls->{cipher_suite}, $IANA{$cipher} // -1, "cipher_suite is the IANA id of $cipher");
    is($tls->{server_cert}, $SERVER_PEM, 'server_cert');
    stop_engine($s);

    like(start_error(ssl_cert_file => $SERVER_CERT, ssl_key_file => $SERVER_KEY, ssl_min_version => 'TLSv1_1'),
        qr/ssl_min_version/, 'an unsupported ssl_min_version makes start croak');
};

subtest '(c) client certificates: ssl_verify_client require and optional' => sub {
    my %with_cert = (SSL_cert_file => "$dir/client-chain.pem", SSL_key_file => "$dir/client.key");
    my %rogue     = (SSL_cert_file => "$dir/rogue.pem",        SSL_key_file => "$dir/rogue.key");
    # rustls answers a certificate it cannot chain to ssl_ca_file with unknown_ca.
    my $UNKNOWN_CA = qr/alert unknown ca/;

    my $s = tls_engine(ssl_verify_client => 'require', ssl_ca_file => $CA);
    refused($s, 'require: a client without a certificate', qr/alert certificate required/, {}, \%with_cert);
    refused($s, 'require: a TLS 1.2 client without a certificate', qr/alert certificate required/,
        { SSL_version => 'TLSv1_2' }, \%with_cert);
    refused($s, 'require: a certificate from another CA', $UNKNOWN_CA, \%rogue, \%with_cert);
    my ($r, $err) = tls_get($s, '/with-cert', %with_cert);
    ok($r && $r->{scope}, 'require: a client with a certificate from the CA is served') or do { diag($err); return };
    is($r->{response} && $r->{response}{body}, 'hello /with-cert', 'and gets the response');
    my $tls = $r->{scope}{extensions}{tls};
    is_deeply($tls->{client_cert_chain}, [ $CLIENT_PEM, $CA_PEM ], 'client_cert_chain: the PEMs sent, leaf first');
    like($tls->{client_cert_name} // '', qr/\bCN=pagi-test-client\b/, "client_cert_name has the CN ($tls->{client_cert_name})");
    like($tls->{client_cert_name} // '', qr/\bO=PAGI Tests\b/, 'and the O');
    is($tls->{client_cert_error}, undef, 'client_cert_error undef');

    ($r, $err) = tls_get($s, '/with-cert-12', %with_cert, SSL_version => 'TLSv1_2');
    is_deeply($r && $r->{scope}{extensions}{tls}{client_cert_chain}, [ $CLIENT_PEM, $CA_PEM ],
        'the same over TLS 1.2') or diag($err);
    stop_engine($s);

    $s = tls_engine(ssl_verify_client => 'optional', ssl_ca_file => $CA);
    ($r, $err) = tls_get($s, '/anonymous');
    ok($r && $r->{response}, 'optional: a client without a certificate is served') or diag($err);
    is_deeply($r && $r->{scope}{extensions}{tls}{client_cert_chain}, [], 'with an empty chain');
    is($r && $r->{scope}{extensions}{tls}{client_cert_name}, undef, 'and no name');
    ($r, $err) = tls_get($s, '/known', %with_cert);
    ok($r && $r->{response}, 'optional: a client with a certificate is served') or diag($err);
    is($r && $r->{scope}{extensions}{tls}{client_cert_chain}[0], $CLIENT_PEM, 'and its certificate is in the scope');
    like($r && $r->{scope}{extensions}{tls}{client_cert_name}, qr/CN=pagi-test-client/, 'with its name');
    refused($s, 'optional: a certificate that fails verification fails the handshake', $UNKNOWN_CA, \%rogue);
    stop_engine($s);

    like(start_error(ssl_cert_file => $SERVER_CERT, ssl_key_file => $SERVER_KEY, ssl_verify_client => 'require'),
        qr/ssl_ca_file/, 'require without ssl_ca_file makes start croak');
    like(start_error(ssl_cert_file => $SERVER_CERT, ssl_key_file => $SERVER_KEY, ssl_verify_client => 'sometimes',
        ssl_ca_file => $CA), qr/ssl_verify_client/, 'an unknown ssl_verify_client makes start croak');
};

subtest '(d) ALPN negotiates http/1.1' => sub {
    my $s = tls_engine();
    my $out = `openssl s_client -connect 127.0.0.1:$s->{port} -alpn http/1.1 -CAfile '$CA' -servername localhost </dev/null 2>&1`;
    like($out, qr{^ALPN protocol: http/1\.1$}m, 'openssl s_client -alpn http/1.1 agrees on http/1.1')
        or diag($out);
    like($out, qr/Verify return code: 0 \(ok\)/, 'and verifies the server against the CA');

    my ($r, $err) = tls_get($s, '/alpn', SSL_alpn_protocols => [ 'h2', 'http/1.1' ]);
    ok($r && $r->{response}, 'IO::Socket::SSL offering h2 and http/1.1 is served') or diag($err);
    is($r && $r->{socket}->alpn_selected, 'http/1.1', 'the server picks http/1.1');
    stop_engine($s);
};

subtest '(e) ssl_cipher_list' => sub {
    my $s = tls_engine(ssl_cipher_list => 'TLS13_CHACHA20_POLY1305_SHA256');
    my ($r, $err) = tls_get($s, '/chacha');
    ok($r && $r->{response}, 'a client is served with the single suite') or do { diag($err); return };
    is($r->{socket}->get_cipher, 'TLS_CHACHA20_POLY1305_SHA256', 'the client negotiated it');
    is($r->{scope}{extensions}{tls}{cipher_suite}, 0x1303, 'cipher_suite 0x1303 in the scope');
    refused($s, 'a TLS 1.2 client has no suite in common', qr/alert protocol version/, { SSL_version => 'TLSv1_2' });
    stop_engine($s);

    $s = tls_engine(ssl_cipher_list => 'TLS13_AES_128_GCM_SHA256:TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384');
    ($r, $err) = tls_get($s, '/two', SSL_version => 'TLSv1_2');
    is($r && $r->{scope}{extensions}{tls}{cipher_suite}, 0xC02C, 'a colon-separated list: TLS 1.2 gets its suite')
        or diag($err);
    ($r, $err) = tls_get($s, '/two13');
    is($r && $r->{scope}{extensions}{tls}{cipher_suite}, 0x1301, 'and TLS 1.3 its own') or diag($err);
    stop_engine($s);

    my $croak = start_error(ssl_cert_file => $SERVER_CERT, ssl_key_file => $SERVER_KEY,
        ssl_cipher_list => 'TLS13_AES_128_GCM_SHA256:NO_SUCH_SUITE');
    ok($croak, 'an unknown suite name makes start croak');
    like($croak // '', qr/ssl_cipher_list/, 'naming the option');
    like($croak // '', qr/NO_SUCH_SUITE/, 'and the unknown name');
    like($croak // '', qr/TLS13_AES_128_GCM_SHA256.*TLS13_CHACHA20_POLY1305_SHA256/s, 'listing the known names');
};

subtest '(f) bad certificate and key files make start croak' => sub {
    my $missing = "$dir/no-such-cert.pem";
    my $croak = start_error(ssl_cert_file => $missing, ssl_key_file => $SERVER_KEY);
    like($croak // '', qr/\Q$missing\E/, 'a missing certificate file: the message names its path');
    like($croak // '', qr/^PAGI::Server::Native::start: /, 'from start');

    $missing = "$dir/no-such-key.pem";
    like(start_error(ssl_cert_file => $SERVER_CERT, ssl_key_file => $missing) // '', qr/\Q$missing\E/,
        'a missing key file: the message names its path');

    $croak = start_error(ssl_cert_file => $SERVER_CERT, ssl_key_file => "$dir/other.key");
    ok($croak, 'a key that does not match the certificate makes start croak');
    like($croak // '', qr/\Q$dir\E\/other\.key/, 'naming the key file') and note($croak);

    like(start_error(ssl_cert_file => $SERVER_KEY, ssl_key_file => $SERVER_KEY) // '', qr/\Q$SERVER_KEY\E.*no certificate/,
        'a certificate file without a certificate');
    like(start_error(ssl_cert_file => $SERVER_CERT, ssl_key_file => $SERVER_CERT) // '', qr/\Q$SERVER_CERT\E.*no private key/,
        'a key file without a key');
    like(start_error() // '', qr/ssl_cert_file/, 'a TLS listener without ssl_cert_file');
    like(start_error(ssl_cert_file => $SERVER_CERT, ssl_verify_client => 'require', ssl_ca_file => "$dir/no-ca.pem",
        ssl_key_file => $SERVER_KEY) // '', qr/\Q$dir\E\/no-ca\.pem/, 'a missing ssl_ca_file: named too');
};

subtest '(g) a WebSocket over TLS' => sub {
    my $s = tls_engine();
    my ($sock, $err) = ssl_client($s->{port});
    ok($sock, 'TLS connection') or do { diag($err); return };
    my $key = random_key();
    print {$sock} "GET /chat HTTP/1.1\r\nHost: localhost:$s->{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        . "Sec-WebSocket-Key: $key\r\nSec-WebSocket-Version: 13\r\n\r\n";
    my $ev = next_request($s);
    ok($ev, 'the handshake reaches the app') or return;
    my ($id, $scope) = @$ev[1, 2];
    is($scope->{type}, 'websocket', 'websocket scope');
    is($scope->{scheme}, 'wss', 'scheme wss');
    is($scope->{path}, '/chat', 'path');
    is($scope->{extensions}{tls}{tls_version}, 0x0304, 'the tls extension is there');
    is($scope->{extensions}{tls}{server_cert}, $SERVER_PEM, 'with the server certificate');

    $s->{engine}->ws_accept($id, undef, []);
    $s->{engine}->flush;
    my ($buf) = ssl_read_until($sock, sub { $_[0] =~ /\r\n\r\n/ });
    like($buf, qr{\AHTTP/1\.1 101 }, '101 Switching Protocols over TLS');
    like($buf, qr{^sec-websocket-accept: \Q${\ accept_key($key)}\E\r$}mi, 'with the accept key');
    $buf =~ s/\A.*?\r\n\r\n//s;

    print {$sock} build_frame(opcode => OP_TEXT, payload => 'hello over wss');
    ok(pump_until($s, sub { count_kind($_[0], EV_WS_MESSAGE) }), 'a message arrives');
    my ($msg) = take($s, EV_WS_MESSAGE);
    is_deeply([ @$msg[2, 3] ], [ 'hello over wss', 1 ], 'the text message');
    $s->{engine}->ws_send_text($id, "echo: $msg->[2]");
    $s->{engine}->flush;
    my ($more) = ssl_read_until($sock, sub { my $b = $buf . $_[0]; scalar parse_frames(\$b) });
    $buf .= $more;
    my ($frame) = parse_frames(\$buf);
    is($frame && $frame->{payload}, 'echo: hello over wss', 'the echo comes back');
    ok($frame && !$frame->{masked}, 'unmasked');

    print {$sock} build_frame(opcode => OP_CLOSE, payload => pack('n', 1000));
    my ($rest, $closed) = ssl_read_until($sock, sub { 0 }, 3);
    $buf .= $rest;
    ($frame) = parse_frames(\$buf);
    is($frame && $frame->{code}, 1000, 'close 1000 is answered');
    ok($closed, 'then the connection closes');
    ok(pump_until($s, sub { count_kind($_[0], EV_WS_DISCONNECT) }), 'EV_WS_DISCONNECT');
    stop_engine($s);
};

subtest '(h) a file body over TLS arrives intact' => sub {
    my $size = 3 * 1024 * 1024 + 12345;
    my $content = pack 'N*', map { int rand 4294967296 } 1 .. int($size / 4) + 1;
    substr($content, $size) = '';
    my $path = "$dir/random.bin";
    spew($path, $content);

    my $s = tls_engine();
    my ($sock, $err) = ssl_client($s->{port});
    ok($sock, 'TLS connection') or do { diag($err); return };
    for my $case ([ 'whole file', 0, $size ], [ 'a range', 1000, 200_000 ]) {
        my ($name, $offset, $length) = @$case;
        print {$sock} get_request("/file");
        my $ev = next_request($s);
        ok($ev, "$name: request") or return;
        $s->{engine}->http_start($ev->[1], 200,
            [ [ 'content-type', 'application/octet-stream' ], [ 'content-length', $length ] ], 0);
        $s->{engine}->http_file($ev->[1], $path, $offset, $length);
        $s->{engine}->flush;
        my $res = ssl_response($sock, 30);
        ok($res, "$name: complete response") or return;
        is($res->{status}, 200, "$name: status 200");
        is(length $res->{body}, $length, "$name: $length bytes");
        is(md5_hex($res->{body}), md5_hex(substr $content, $offset, $length), "$name: MD5 matches");
        ok(pump_until($s, sub { grep { $_->[0] == EV_DONE && $_->[1] == $ev->[1] } @{ $_[0] } }), "$name: EV_DONE");
    }
    stop_engine($s);
};

subtest '(i) a client that never sends a ClientHello is dropped after header_timeout' => sub {
    my $s = tls_engine(header_timeout => 1);
    my $sock = client($s->{port});
    my $t0 = time;
    my ($buf, $closed) = read_until($sock, sub { 0 }, 6);
    my $took = time - $t0;
    ok($closed, 'the server closes the connection');
    is($buf, '', 'without sending anything');
    cmp_ok($took, '>=', 0.8, sprintf('not before header_timeout (%.2f s)', $took));
    cmp_ok($took, '<', 3, 'but soon after it');

    # A ClientHello cut short is dropped the same way.
    my $half = client($s->{port});
    print {$half} "\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03";
    $t0 = time;
    ($buf, $closed) = read_until($half, sub { 0 }, 6);
    ok($closed, 'a partial ClientHello is dropped too');
    cmp_ok(time - $t0, '<', 3, 'after header_timeout');
    stop_engine($s);
};

subtest '(j) plain HTTP sent to the TLS port gets the connection closed' => sub {
    my $s = tls_engine();
    my $sock = client($s->{port});
    print {$sock} get_request('/plain-to-tls');
    my $t0 = time;
    my ($buf, $closed) = read_until($sock, sub { 0 }, 5);
    ok($closed, 'the connection is closed');
    cmp_ok(time - $t0, '<', 2, 'promptly (no hang until a timeout)');
    unlike($buf, qr/\AHTTP\//, 'no cleartext HTTP response');
    note(sprintf 'the server sent %d bytes (a TLS alert at most): %s', length $buf, unpack 'H*', $buf);
    ok(!pump_until($s, sub { count_kind($_[0], EV_REQUEST) }, 0.3), 'no request reached the app');

    my ($r, $err) = tls_get($s, '/after');
    is($r && $r->{response} && $r->{response}{body}, 'hello /after', 'the listener still serves TLS clients') or diag($err);
    stop_engine($s);
};

done_testing;

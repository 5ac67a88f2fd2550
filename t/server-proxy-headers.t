# proxy_headers (issue 9 item 8): only peers in forwarded_allow_ips are
# believed; the client is the right-most X-Forwarded-For address that is not
# itself trusted; a client's own Forwarded or X-Forwarded-Host never counts
# unless its option is on; a header that does not parse is ignored whole;
# Unix-socket peers are trusted only with 'unix:'. Every request is sent raw
# over a real socket from 127.0.0.1 (trusted by default), as a proxy that
# passes the client's headers through would send it.
use strict;
use warnings;
use Test::More;
use FindBin;
use lib "$FindBin::Bin/lib";
use PAGI::Test::Server qw(loop start_server stop_server raw_exchange parse_responses);
use PAGI::Server;
use Future::AsyncAwait;
use File::Temp ();
use IO::Async::Stream;
use IO::Socket::UNIX;
use JSON::PP ();
use Socket qw(SOCK_STREAM);

my $loop = loop();
my $json = JSON::PP->new->canonical;
# Unix socket paths are limited to ~107 bytes: keep the directory short.
my $dir = File::Temp->newdir('pagi-XXXXXX', TMPDIR => 1);

# Answers with what the scope says about where the request came from.
sub describe {
    my ($scope) = @_;
    return $json->encode({
        client => exists $scope->{client} ? $scope->{client} : 'none',
        scheme => $scope->{scheme},
        server => $scope->{server},
        host   => [ map { $_->[1] } grep { $_->[0] eq 'host' } @{ $scope->{headers} } ],
    });
}

my $app = async sub {
    my ($scope, $receive, $send) = @_;
    if ($scope->{type} eq 'websocket') {
        await $receive->();    # websocket.connect
        await $send->({ type => 'websocket.accept' });
        await $send->({ type => 'websocket.send', text => describe($scope) });
        await $send->({ type => 'websocket.close', code => 1000 });
        return;
    }
    die "Unsupported scope type: $scope->{type}\n" unless $scope->{type} eq 'http';
    await $send->({ type => 'http.response.start', status => 200, headers => [ [ 'content-type', 'application/json' ] ] });
    await $send->({ type => 'http.response.body', body => describe($scope) });
};

sub request_bytes {
    my ($port, @headers) = @_;
    return "GET / HTTP/1.1\r\nHost: 127.0.0.1:$port\r\nConnection: close\r\n" . join('', map { "$_\r\n" } @headers) . "\r\n";
}

sub decode_response {
    my ($bytes) = @_;
    my ($r) = parse_responses($bytes);
    return undef unless $r && ($r->{status} // 0) == 200;
    return eval { $json->decode($r->{body}) };
}

# GET / over TCP with extra header lines → what the app saw (undef on failure).
sub seen {
    my ($port, @headers) = @_;
    my $bytes = eval { raw_exchange($port, request_bytes($port, @headers), timeout => 30, %{ $main::CONNECT // {} })->get };
    diag("request failed: $@") unless defined $bytes;
    return decode_response($bytes // '');
}

# The same over a Unix-domain socket.
sub seen_unix {
    my ($path, @headers) = @_;
    my $sock = IO::Socket::UNIX->new(Peer => $path, Type => SOCK_STREAM) or return diag("connect $path: $!");
    my $done = $loop->new_future;
    my $buf = '';
    my $stream = IO::Async::Stream->new(
        handle      => $sock,
        on_read     => sub { my ($s, $in, $eof) = @_; $buf .= $$in; $$in = ''; $done->done if $eof && !$done->is_ready; 0 },
        on_read_eof => sub { $done->done unless $done->is_ready },
    );
    $loop->add($stream);
    $stream->write(request_bytes(0, @headers));
    my $ok = eval { Future->wait_any($done, $loop->delay_future(after => 20)->then_fail("no answer on $path"))->get; 1 };
    diag($@) unless $ok;
    $stream->close_now;
    $loop->remove($stream) if $stream->loop;
    return decode_response($buf);
}

# The payload of the first (unmasked, unfragmented) text frame after the
# handshake response.
sub first_text_message {
    my ($bytes) = @_;
    my $frames = substr($bytes, index($bytes, "\r\n\r\n") + 4);
    return '' unless length $frames >= 2 && ord($frames) == 0x81;
    my $length = ord(substr($frames, 1, 1)) & 0x7f;
    return substr($frames, 2, $length) if $length < 126;
    return substr($frames, 4, unpack('n', substr($frames, 2, 2)));
}

sub with_server {
    my ($options, $code) = @_;
    my ($server, $port) = start_server(app => $app, %$options);
    $code->($port, $server);
    stop_server($server);
}

my $peer = qr/\A127\.0\.0\.1\z/;

subtest 'X-Forwarded-For from a trusted peer (127.0.0.1 by default)' => sub {
    with_server({ proxy_headers => 1 }, sub {
        my ($port) = @_;
        my $s = seen($port, 'X-Forwarded-For: 203.0.113.7', 'X-Forwarded-Proto: https');
        is_deeply($s->{client}, [ '203.0.113.7', 0 ], 'client from X-Forwarded-For');
        is($s->{scheme}, 'https', 'scheme from X-Forwarded-Proto');
        is_deeply($s->{server}, [ '127.0.0.1', $port ], 'server unchanged');

        $s = seen($port, 'X-Forwarded-For: 198.51.100.66, 203.0.113.7');
        is_deeply($s->{client}, [ '203.0.113.7', 0 ],
            'a client-sent address left of the one the proxy appended is not believed');

        $s = seen($port, 'X-Forwarded-For: 198.51.100.66, 203.0.113.7, 127.0.0.1', 'X-Forwarded-For: ::1');
        is_deeply($s->{client}, [ '203.0.113.7', 0 ], 'trusted hops (also on a second header line) are skipped');

        $s = seen($port, 'X-Forwarded-For: 127.0.0.1, ::1');
        is_deeply($s->{client}, [ '127.0.0.1', 0 ], 'every hop trusted: the left-most');

        $s = seen($port, 'X-Forwarded-For: [2001:DB8::7]:4711');
        is_deeply($s->{client}, [ '2001:db8::7', 4711 ], 'an IPv6 hop with a port, in canonical form');

        $s = seen($port, 'X-Forwarded-For: 198.51.100.66, unknown');
        is($s->{client}[0], '127.0.0.1', 'the nearest proxy does not know its client: left alone, not the address before it');

        $s = seen($port, 'X-Forwarded-Proto: https, http');
        is($s->{scheme}, 'http', 'of several protos the last (the nearest proxy) counts');

        $s = seen($port, 'X-Forwarded-Proto: gopher');
        is($s->{scheme}, 'http', 'an unknown proto is ignored');
    });
};

subtest 'spoof attempts through the trusted proxy' => sub {
    with_server({ proxy_headers => 1 }, sub {
        my ($port) = @_;
        my $s = seen($port, 'Forwarded: for=198.51.100.66;proto=https;host=evil.example', 'X-Forwarded-For: 203.0.113.7');
        is_deeply($s->{client}, [ '203.0.113.7', 0 ], "the client's own Forwarded does not override X-Forwarded-For");
        is($s->{scheme}, 'http', '... nor the scheme');
        is_deeply($s->{server}, [ '127.0.0.1', $port ], '... nor the server');

        $s = seen($port, 'Forwarded: for=198.51.100.66;proto=https');
        like($s->{client}[0], $peer, 'Forwarded alone changes nothing with forwarded_header off');
        is($s->{scheme}, 'http', '... scheme included');

        $s = seen($port, 'X-Forwarded-Host: evil.example:8443');
        is_deeply($s->{server}, [ '127.0.0.1', $port ], 'X-Forwarded-Host is ignored without forwarded_host');
        is_deeply($s->{host}, ["127.0.0.1:$port"], '... and the host header stays');
    });
};

subtest 'a header that does not parse is ignored whole' => sub {
    with_server({ proxy_headers => 1, forwarded_host => 1 }, sub {
        my ($port) = @_;
        for my $bad ('203.0.113.7, not-an-address', '<script>, 203.0.113.7', '203.0.113.7, 1.2.3.4:99999', '300.1.1.1') {
            my $s = seen($port, "X-Forwarded-For: $bad");
            like($s->{client}[0], $peer, "X-Forwarded-For: $bad");
        }
        my $s = seen($port, 'X-Forwarded-Proto: https, ht tp');
        is($s->{scheme}, 'http', 'X-Forwarded-Proto with a bad element');
        $s = seen($port, 'X-Forwarded-Host: good.example, bad/host');
        is_deeply($s->{server}, [ '127.0.0.1', $port ], 'X-Forwarded-Host with a bad element');
        $s = seen($port, 'X-Forwarded-For: 203.0.113.7', 'X-Forwarded-Proto: bogus value');
        is_deeply($s->{client}, [ '203.0.113.7', 0 ], 'a bad header does not spoil a good one');
    });
    with_server({ proxy_headers => 1, forwarded_header => 1, forwarded_host => 1 }, sub {
        my ($port) = @_;
        # Each of these ends with the element a proxy appended; a parser
        # that stops at the first bad token would apply only the client's part.
        for my $bad (
            'for=198.51.100.66;proto=https;garbage, for=203.0.113.7',
            'for="198.51.100.66, for=203.0.113.7',
            'for=198.51.100.66;for=198.51.100.67, for=203.0.113.7',
            'for=2001:db8::1, for=203.0.113.7',
            'for=198.51.100.66;host="bad host", for=203.0.113.7',
        ) {
            my $s = seen($port, "Forwarded: $bad");
            like($s->{client}[0], $peer, "Forwarded: $bad");
            is($s->{scheme}, 'http', '... scheme unchanged');
            is_deeply($s->{server}, [ '127.0.0.1', $port ], '... server unchanged');
        }
    });
};

subtest 'forwarded_header: RFC 7239 Forwarded instead of X-Forwarded-*' => sub {
    with_server({ proxy_headers => 1, forwarded_header => 1 }, sub {
        my ($port) = @_;
        my $s = seen($port, 'Forwarded: for=198.51.100.66;proto=http, for="[2001:db8::1]:4711";proto=https;host=ex.org',
            'X-Forwarded-For: 192.0.2.99');
        is_deeply($s->{client}, [ '2001:db8::1', 4711 ], 'client from the right-most untrusted for=');
        is($s->{scheme}, 'https', 'proto from the same element');
        is_deeply($s->{server}, [ '127.0.0.1', $port ], 'host= needs forwarded_host');

        $s = seen($port, 'Forwarded: for=203.0.113.7;proto=https, For=127.0.0.1;Proto=http');
        is_deeply($s->{client}, [ '203.0.113.7', 0 ], 'a trusted proxy in the chain is skipped (names are case-insensitive)');
        is($s->{scheme}, 'https', "proto from the client's element");

        $s = seen($port, 'Forwarded: for=198.51.100.66, for=_hidden;proto=https');
        like($s->{client}[0], $peer, 'an obfuscated client is not replaced by the address before it');
        is($s->{scheme}, 'https', '... its element still gives the proto');

        $s = seen($port, 'X-Forwarded-For: 203.0.113.7', 'X-Forwarded-Proto: https');
        like($s->{client}[0], $peer, 'X-Forwarded-For is ignored with forwarded_header');
        is($s->{scheme}, 'http', '... and X-Forwarded-Proto');
    });
};

subtest 'forwarded_host: server and host header from the proxy' => sub {
    with_server({ proxy_headers => 1, forwarded_host => 1 }, sub {
        my ($port) = @_;
        my $s = seen($port, 'X-Forwarded-Host: app.example', 'X-Forwarded-Proto: https');
        is_deeply($s->{server}, [ 'app.example', 443 ], 'server from X-Forwarded-Host, port from the scheme');
        is_deeply($s->{host}, ['app.example'], 'the host header is replaced');
        $s = seen($port, 'X-Forwarded-Host: evil.example, [2001:db8::5]:8080');
        is_deeply($s->{server}, [ '2001:db8::5', 8080 ], 'the last value (from the nearest proxy), IPv6 with a port');
        is_deeply($s->{host}, ['[2001:db8::5]:8080'], '... host header');
    });
    with_server({ proxy_headers => 1, forwarded_header => 1, forwarded_host => 1 }, sub {
        my ($port) = @_;
        my $s = seen($port, 'Forwarded: for=203.0.113.7;host=evil.example, for=198.51.100.1;host="app.example:8443";proto=https');
        is_deeply($s->{server}, [ 'app.example', 8443 ], "Forwarded host= of the client's element");
        is_deeply($s->{host}, ['app.example:8443'], '... host header');
    });
};

subtest 'an untrusted peer is believed about nothing' => sub {
    with_server({ proxy_headers => 1, forwarded_allow_ips => '10.0.0.1, 192.0.2.0/24, fd00::/8', forwarded_host => 1 }, sub {
        my ($port) = @_;
        my $s = seen($port, 'X-Forwarded-For: 203.0.113.7', 'X-Forwarded-Proto: https', 'X-Forwarded-Host: app.example');
        like($s->{client}[0], $peer, 'client unchanged');
        is($s->{scheme}, 'http', 'scheme unchanged');
        is_deeply($s->{server}, [ '127.0.0.1', $port ], 'server unchanged');
        is_deeply($s->{host}, ["127.0.0.1:$port"], 'host header unchanged');
    });
    local $ENV{FORWARDED_ALLOW_IPS} = '10.0.0.1';
    with_server({ proxy_headers => 1 }, sub {
        my ($port) = @_;
        like(seen($port, 'X-Forwarded-For: 203.0.113.7')->{client}[0], $peer, 'FORWARDED_ALLOW_IPS names the trusted peers');
    });
    with_server({ proxy_headers => 1, forwarded_allow_ips => '127.0.0.0/8' }, sub {
        my ($port) = @_;
        is_deeply(seen($port, 'X-Forwarded-For: 203.0.113.7')->{client}, [ '203.0.113.7', 0 ], 'the option wins over the variable');
    });
    local $ENV{FORWARDED_ALLOW_IPS} = 'bogus';
    ok(!eval { PAGI::Server->new(app => $app, proxy_headers => 1); 1 }, 'a bad FORWARDED_ALLOW_IPS is refused');
    like($@, qr/FORWARDED_ALLOW_IPS 'bogus' is not an IP address/, '... naming the variable');
};

subtest "'*' trusts every peer" => sub {
    with_server({ proxy_headers => 1, forwarded_allow_ips => '*' }, sub {
        my ($port) = @_;
        is_deeply(seen($port, 'X-Forwarded-For: 198.51.100.66, 203.0.113.7')->{client}, [ '198.51.100.66', 0 ],
            'every hop is trusted: the left-most');
    });
};

subtest 'Unix-socket peers are trusted only with unix:' => sub {
    for my $case ([ '127.0.0.1', 0 ], [ '127.0.0.1, unix:', 1 ], [ '*', 1 ]) {
        my ($allow, $trusted) = @$case;
        my $path = "$dir/proxy.sock";
        my $server = PAGI::Server->new(app => $app, quiet => 1, proxy_headers => 1, forwarded_allow_ips => $allow,
            listen => [ { socket => $path }, { host => '127.0.0.1', port => 0 } ]);
        $loop->add($server);
        $server->listen->get;
        my $s = seen_unix($path, 'X-Forwarded-For: 203.0.113.7', 'X-Forwarded-Proto: https');
        if ($trusted) {
            is_deeply($s->{client}, [ '203.0.113.7', 0 ], "forwarded_allow_ips '$allow': a Unix peer's X-Forwarded-For counts");
            is($s->{scheme}, 'https', '... and its X-Forwarded-Proto');
        }
        else {
            is($s->{client}, 'none', "forwarded_allow_ips '$allow': a Unix peer's X-Forwarded-For is ignored");
            is($s->{scheme}, 'http', '... and its X-Forwarded-Proto');
        }
        my ($tcp) = grep { $_->{type} eq 'tcp' } @{ $server->listeners };
        is_deeply(seen($tcp->{port}, 'X-Forwarded-For: 203.0.113.8')->{client}, [ '203.0.113.8', 0 ],
            '127.0.0.1 on the TCP listener beside it is trusted');
        stop_server($server);
    }
};

subtest 'a WebSocket scope gets ws/wss' => sub {
    with_server({ proxy_headers => 1 }, sub {
        my ($port) = @_;
        for my $case ([ 'https', 'wss' ], [ 'wss', 'wss' ], [ 'http', 'ws' ]) {
            my ($proto, $want) = @$case;
            my $bytes = eval {
                raw_exchange($port, "GET /ws HTTP/1.1\r\nHost: 127.0.0.1:$port\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                    . "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
                    . "X-Forwarded-For: 203.0.113.9\r\nX-Forwarded-Proto: $proto\r\n\r\n",
                    until => qr/\r\n\r\n\x81(?:[\x00-\x7d]|\x7e..)\{.*\}\x88/s, timeout => 30)->get;
            } // '';
            like($bytes, qr{\AHTTP/1\.1 101 }, "X-Forwarded-Proto: $proto: handshake") or next;
            my $s = eval { $json->decode(first_text_message($bytes)) } // {};
            is($s->{scheme}, $want, "... scheme $want");
            is_deeply($s->{client}, [ '203.0.113.9', 0 ], '... client from X-Forwarded-For');
        }
    });
};

subtest 'the default list trusts ::1' => sub {
    my ($server, $port) = eval { start_server(app => $app, host => '::1', proxy_headers => 1) };
    unless ($server) {
        my $why = "cannot bind ::1: " . ($@ =~ s/\n.*//sr);
        return $ENV{CI} ? fail($why) : plan(skip_all => $why);
    }
    local $main::CONNECT = { host => '::1' };
    is_deeply(seen($port, 'X-Forwarded-For: 203.0.113.7')->{client}, [ '203.0.113.7', 0 ], 'a peer on ::1 is trusted');
    stop_server($server);
};

subtest 'option checks' => sub {
    for my $name (qw(forwarded_header forwarded_host)) {
        ok(!eval { PAGI::Server->new(app => $app, $name => 1); 1 }, "$name without proxy_headers is refused");
        like($@, qr/option '$name' needs 'proxy_headers'/, '... saying so');
    }
    ok(!eval { PAGI::Server->new(app => $app, proxy_headers => 1, forwarded_allow_ips => 'unix:/run/x.sock'); 1 },
        'unix: with a path is refused');
    like($@, qr/option 'forwarded_allow_ips' .*'unix:' takes no path/, '... naming the option');
};

done_testing;

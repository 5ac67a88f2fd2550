# PAGI::Simple sessions over real sockets: signed cookie sessions
# (HMAC-SHA256) with HttpOnly, SameSite=Lax, Secure only on https; tampered,
# foreign and expired cookies ignored; secret rotation (newest signs, all
# verify); optional AES-GCM encryption; a server-side store; clearing.
use strict;
use warnings;
use Test::More;
use FindBin;
use lib "$FindBin::Bin/lib";
use PAGI::Test::Server qw(stop_server);
use PAGI::Test::Simple qw(serve request);
use MIME::Base64 ();
use PAGI::Simple;
use PAGI::Simple::Session;

my $NEW = 'new-secret-0123456789';
my $OLD = 'old-secret-0123456789';

sub make_app (%opt) {
    my $app = PAGI::Simple->new(name => 'sess');
    $app->sessions(%opt);
    $app->get('/count' => sub ($c) { $c->text(++$c->session->{count}) });
    $app->get('/peek' => sub ($c) { $c->text($c->session->{count} // 'none') });
    $app->get('/logout' => sub ($c) { $c->session_clear; $c->text('bye') });
    return $app;
}

sub cookie_of ($res) {
    my ($set) = @{ $res->{all_headers}->('set-cookie') };
    return ($set // '') =~ /^pagi_session=([^;]*)/ ? $1 : undef;
}

my ($s1, $p1) = serve(make_app(secrets => [$NEW]));
my $r = request($p1, 'GET', '/count');
is($r->{body}, 1, 'a new session');
my ($set) = @{ $r->{all_headers}->('set-cookie') };
like($set, qr/; HttpOnly/, 'HttpOnly');
like($set, qr/; SameSite=Lax/, 'SameSite=Lax');
unlike($set, qr/; secure/i, 'no Secure over http');
my $cookie = cookie_of($r);
like($cookie, qr/^s1\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$/, 'a signed value');

$r = request($p1, 'GET', '/count', headers => [ [ 'Cookie', "pagi_session=$cookie" ] ]);
is($r->{body}, 2, 'the session comes back');
my $cookie2 = cookie_of($r);
$r = request($p1, 'GET', '/peek', headers => [ [ 'Cookie', "pagi_session=$cookie2" ] ]);
is($r->{body}, 2, 'reading the session');
is(scalar @{ $r->{all_headers}->('set-cookie') }, 0, 'an unchanged session writes no cookie');

# Tampering: rewrite the payload to count=100, keep the signature.
my (undef, $payload, $sig) = split /\./, $cookie2;
my $doc = MIME::Base64::decode_base64url($payload);
(my $forged = $doc) =~ s/"count":2/"count":100/;
my $forged_cookie = 's1.' . MIME::Base64::encode_base64url($forged) . ".$sig";
$r = request($p1, 'GET', '/peek', headers => [ [ 'Cookie', "pagi_session=$forged_cookie" ] ]);
is($r->{body}, 'none', 'a tampered cookie is ignored');
$r = request($p1, 'GET', '/peek', headers => [ [ 'Cookie', 'pagi_session=garbage%%' ] ]);
is($r->{body}, 'none', 'garbage is ignored');

# Rotation: an app whose newest secret is another one still reads the old cookie and re-signs with the new.
my ($s2, $p2) = serve(make_app(secrets => [ 'rotated-secret-0123456', $NEW ]));
$r = request($p2, 'GET', '/count', headers => [ [ 'Cookie', "pagi_session=$cookie2" ] ]);
is($r->{body}, 3, 'an older secret still verifies');
my $rotated = cookie_of($r);
my ($s3, $p3) = serve(make_app(secrets => [$NEW]));
$r = request($p3, 'GET', '/peek', headers => [ [ 'Cookie', "pagi_session=$rotated" ] ]);
is($r->{body}, 'none', 'the new cookie is signed with the newest secret (the old-only app cannot read it)');
my ($s4, $p4) = serve(make_app(secrets => [$OLD]));
$r = request($p4, 'GET', '/peek', headers => [ [ 'Cookie', "pagi_session=$cookie2" ] ]);
is($r->{body}, 'none', 'a cookie signed with an unknown secret is ignored');

# Expiry: a correctly signed document whose exp has passed.
my $mgr = PAGI::Simple::Session->new(secrets => [$NEW]);
my $expired = $mgr->encode_value({ d => { count => 50 }, exp => time - 10 });
$r = request($p1, 'GET', '/peek', headers => [ [ 'Cookie', "pagi_session=$expired" ] ]);
is($r->{body}, 'none', 'an expired session is ignored');
my $fresh = $mgr->encode_value({ d => { count => 50 }, exp => time + 100 });
$r = request($p1, 'GET', '/peek', headers => [ [ 'Cookie', "pagi_session=$fresh" ] ]);
is($r->{body}, 50, 'a fresh one made the same way is read (the expiry test is meaningful)');

$r = request($p1, 'GET', '/logout', headers => [ [ 'Cookie', "pagi_session=$cookie2" ] ]);
like($r->{all_headers}->('set-cookie')->[0], qr/^pagi_session=; .*expires=Thu, 01 Jan 1970/i, 'session_clear deletes the cookie');

# Secure on https (the scope's scheme), through a wrapper that says so.
my $https_app = make_app(secrets => [$NEW]);
$https_app->use(sub ($inner) { sub ($scope, @rest) { $inner->({ %$scope, scheme => 'https' }, @rest) } });
my ($s5, $p5) = serve($https_app);
$r = request($p5, 'GET', '/count');
like($r->{all_headers}->('set-cookie')->[0], qr/; secure/i, 'Secure on https');

# Encrypted sessions.
my ($s6, $p6) = serve(make_app(secrets => [$NEW], encrypt => 1));
$r = request($p6, 'GET', '/count');
my $enc = cookie_of($r);
like($enc, qr/^e1\.[A-Za-z0-9_-]+$/, 'an encrypted value');
unlike(MIME::Base64::decode_base64url(substr $enc, 3), qr/count/, 'whose content is not readable');
$r = request($p6, 'GET', '/count', headers => [ [ 'Cookie', "pagi_session=$enc" ] ]);
is($r->{body}, 2, 'and decrypts');
my $raw = MIME::Base64::decode_base64url(substr $enc, 3);
substr($raw, -1, 1) = chr(ord(substr $raw, -1) ^ 1);
$r = request($p6, 'GET', '/peek', headers => [ [ 'Cookie', 'pagi_session=e1.' . MIME::Base64::encode_base64url($raw) ] ]);
is($r->{body}, 'none', 'a flipped ciphertext bit is rejected');

# Server-side store: the cookie carries only an id.
my $store = PAGI::Simple::Session::Store::Memory->new;
my ($s7, $p7) = serve(make_app(secrets => [$NEW], store => $store));
$r = request($p7, 'GET', '/count');
my $sid_cookie = cookie_of($r);
my $sdoc = $mgr->decode_value($sid_cookie);
like($sdoc->{id}, qr/^[0-9a-f]{32}$/, 'the cookie holds a random id');
ok(!exists $sdoc->{d}, 'and no data');
is($store->get($sdoc->{id})->{count}, 1, 'the data is in the store');
$r = request($p7, 'GET', '/count', headers => [ [ 'Cookie', "pagi_session=$sid_cookie" ] ]);
is($r->{body}, 2, 'read back through the store');
$r = request($p7, 'GET', '/logout', headers => [ [ 'Cookie', "pagi_session=$sid_cookie" ] ]);
ok(!defined $store->get($sdoc->{id}), 'clearing deletes it from the store');

ok(!eval { PAGI::Simple::Session->new(secrets => ['short']) } && $@ =~ /at least 16/, 'short secrets are refused');
ok(!eval { PAGI::Simple::Session->new(secrets => [$NEW], colour => 1) } && $@ =~ /unknown option 'colour'/, 'unknown options are named');
my $nosess = PAGI::Simple->new;
$nosess->get('/' => sub ($c) { $c->session });
my ($s8, $p8) = serve($nosess);
{
    local $SIG{__WARN__} = sub { };
    $r = request($p8, 'GET', '/');
}
is($r->{status}, 500, 'sessions without secrets are an error');

stop_server($_) for $s1, $s2, $s3, $s4, $s5, $s6, $s7, $s8;
done_testing;

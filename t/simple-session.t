# PAGI::Simple sessions, in process through PAGI::Test::Client: signed cookie
# sessions (HMAC-SHA256) with HttpOnly, SameSite=Lax, Secure only on https;
# tampered, foreign and expired cookies ignored; secret rotation (newest
# signs, all verify), for signed and encrypted cookies; expiry in the cookie
# and in the signed payload; optional AES-GCM encryption; a server-side
# store (expired entries ignored); clearing; cookie options.
use strict;
use warnings;
use Test::More;
use FindBin;
use lib "$FindBin::Bin/lib";
use PAGI::Test::Simple qw(client);
use MIME::Base64 ();
use PAGI::Simple;
use PAGI::Simple::Session;

local $SIG{ALRM} = sub { die "simple-session.t: timed out\n" };
alarm 120;

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

sub cookie_of ($res, $name = 'pagi_session') {
    my ($set) = $res->header_values('set-cookie');
    return ($set // '') =~ /^\Q$name\E=([^;]*)/ ? $1 : undef;
}

# A request carrying exactly this session cookie (nothing from the jar).
sub with_cookie ($client, $path, $value) {
    $client->cookie_jar->clear;
    return $client->get($path, cookies => { pagi_session => $value });
}

my $c1 = client(make_app(secrets => [$NEW]));
my $r = $c1->get('/count');
is($r->content, 1, 'a new session');
my ($set) = $r->header_values('set-cookie');
like($set, qr/; HttpOnly/, 'HttpOnly');
like($set, qr/; SameSite=Lax/, 'SameSite=Lax');
unlike($set, qr/; secure/i, 'no Secure over http');
like($set, qr/; max-age=1209600/i, 'the cookie lasts the default two weeks');
my $cookie = cookie_of($r);
like($cookie, qr/^s1\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$/, 'a signed value');

is($c1->get('/count')->content, 2, 'the session comes back (the client keeps the cookie)');
$r = $c1->get('/peek');
is($r->content, 2, 'reading the session');
is(scalar $r->header_values('set-cookie'), 0, 'an unchanged session writes no cookie');
my $cookie2 = $c1->cookie('pagi_session');
isnt($cookie2, $cookie, 'the changed session was written again');

# Tampering: rewrite the payload to count=100, keep the signature.
my (undef, $payload, $sig) = split /\./, $cookie2;
my $doc = MIME::Base64::decode_base64url($payload);
(my $forged = $doc) =~ s/"count":2/"count":100/;
isnt($forged, $doc, 'the forgery changed the payload');
my $forged_cookie = 's1.' . MIME::Base64::encode_base64url($forged) . ".$sig";
is(with_cookie($c1, '/peek', $forged_cookie)->content, 'none', 'a tampered cookie is ignored');
is(with_cookie($c1, '/peek', "s1.$payload." . MIME::Base64::encode_base64url('x' x 32))->content, 'none', 'a wrong signature is ignored');
is(with_cookie($c1, '/peek', "s1.$payload.")->content, 'none', 'so is a missing one');
is(with_cookie($c1, '/peek', 'garbage%%')->content, 'none', 'garbage is ignored');
is(with_cookie($c1, '/peek', $cookie2)->content, 2, 'the genuine cookie still reads (the tampering tests are meaningful)');
$r = with_cookie($c1, '/count', $forged_cookie);
is($r->content, 1, 'a request with a tampered cookie starts a fresh session');

# Rotation: an app whose newest secret is another one still reads the old cookie and re-signs with the new.
my $c2 = client(make_app(secrets => [ 'rotated-secret-0123456', $NEW ]));
$r = with_cookie($c2, '/count', $cookie2);
is($r->content, 3, 'an older secret still verifies');
my $rotated = cookie_of($r);
my $c3 = client(make_app(secrets => [$NEW]));
is(with_cookie($c3, '/peek', $rotated)->content, 'none', 'the new cookie is signed with the newest secret (the old-only app cannot read it)');
is(with_cookie($c2, '/peek', $rotated)->content, 3, 'which the rotated app reads');
my $c4 = client(make_app(secrets => [$OLD]));
is(with_cookie($c4, '/peek', $cookie2)->content, 'none', 'a cookie signed with an unknown secret is ignored');

# Expiry: a correctly signed document whose exp has passed.
my $mgr = PAGI::Simple::Session->new(secrets => [$NEW]);
my $expired = $mgr->encode_value({ d => { count => 50 }, exp => time - 10 });
is(with_cookie($c1, '/peek', $expired)->content, 'none', 'an expired session is ignored');
my $fresh = $mgr->encode_value({ d => { count => 50 }, exp => time + 100 });
is(with_cookie($c1, '/peek', $fresh)->content, 50, 'a fresh one made the same way is read (the expiry test is meaningful)');
is(with_cookie($c1, '/peek', $mgr->encode_value({ d => { count => 50 } }))->content, 'none', 'a document without exp is ignored');
my $c_short = client(make_app(secrets => [$NEW], expires => 60));
$r = $c_short->get('/count');
like(($r->header_values('set-cookie'))[0], qr/; max-age=60(;|$)/i, 'expires sets the cookie lifetime');
my $exp = $mgr->decode_value(cookie_of($r))->{exp};
ok($exp >= time + 50 && $exp <= time + 70, 'and the signed expiry (replay after it is refused)');

$r = with_cookie($c1, '/logout', $cookie2);
like(($r->header_values('set-cookie'))[0], qr/^pagi_session=; .*expires=Thu, 01 Jan 1970/i, 'session_clear deletes the cookie');
$c1->cookie_jar->clear;
$c1->get('/count');
ok(defined $c1->cookie('pagi_session'), 'a client holding a session');
$c1->get('/logout');
ok(!defined $c1->cookie('pagi_session'), 'loses it on session_clear');
is($c1->get('/peek')->content, 'none', 'and the next request has an empty session');

# Secure on https (the scope's scheme).
my $c5 = client(make_app(secrets => [$NEW]), scheme => 'https');
$r = $c5->get('/count');
like(($r->header_values('set-cookie'))[0], qr/; secure/i, 'Secure on https');
is($c5->get('/count')->content, 2, 'and the session works there');
my $c5b = client(make_app(secrets => [$NEW], secure => 1));
like(($c5b->get('/count')->header_values('set-cookie'))[0], qr/; secure/i, 'secure => 1 forces it');

# Cookie options.
my $c9 = client(make_app(secrets => [$NEW], cookie_name => 'sid', path => '/app', samesite => 'Strict', httponly => 0, domain => 'example.org'));
$r = $c9->get('/count');
($set) = $r->header_values('set-cookie');
like($set, qr/^sid=s1\./, 'cookie_name');
like($set, qr/; path=\/app/i, 'path');
like($set, qr/; domain=example\.org/i, 'domain');
like($set, qr/; SameSite=Strict/, 'samesite');
unlike($set, qr/HttpOnly/i, 'httponly => 0');

# Encrypted sessions.
my $c6 = client(make_app(secrets => [$NEW], encrypt => 1));
$r = $c6->get('/count');
my $enc = cookie_of($r);
like($enc, qr/^e1\.[A-Za-z0-9_-]+$/, 'an encrypted value');
unlike(MIME::Base64::decode_base64url(substr $enc, 3), qr/count/, 'whose content is not readable');
is($c6->get('/count')->content, 2, 'and decrypts');
my $raw = MIME::Base64::decode_base64url(substr $enc, 3);
substr($raw, -1, 1) = chr(ord(substr $raw, -1) ^ 1);
is(with_cookie($c6, '/peek', 'e1.' . MIME::Base64::encode_base64url($raw))->content, 'none', 'a flipped ciphertext bit is rejected');
is(with_cookie($c6, '/peek', 'e1.' . MIME::Base64::encode_base64url('short'))->content, 'none', 'a truncated one too');
is(with_cookie($c6, '/peek', $enc)->content, 1, 'the genuine one still decrypts');
my $c6r = client(make_app(secrets => [ 'rotated-secret-0123456', $NEW ], encrypt => 1));
$r = with_cookie($c6r, '/count', $enc);
is($r->content, 2, 'rotation: an encrypted cookie under an older secret still decrypts');
is(with_cookie($c6, '/peek', cookie_of($r))->content, 'none', 'and is re-encrypted under the newest');
is(with_cookie(client(make_app(secrets => [$OLD], encrypt => 1)), '/peek', $enc)->content, 'none', 'an unknown key does not decrypt');

# Server-side store: the cookie carries only an id.
my $store = PAGI::Simple::Session::Store::Memory->new;
my $c7 = client(make_app(secrets => [$NEW], store => $store));
$r = $c7->get('/count');
my $sid_cookie = cookie_of($r);
my $sdoc = $mgr->decode_value($sid_cookie);
like($sdoc->{id}, qr/^[0-9a-f]{32}$/, 'the cookie holds a random id');
ok(!exists $sdoc->{d}, 'and no data');
is($store->get($sdoc->{id})->{count}, 1, 'the data is in the store');
is($c7->get('/count')->content, 2, 'read back through the store');
my $other = client(make_app(secrets => [$NEW], store => $store))->get('/count');
isnt($mgr->decode_value(cookie_of($other))->{id}, $sdoc->{id}, 'another client gets another id');
my $forged_id = $mgr->encode_value({ id => $sdoc->{id}, exp => time + 100 });
my $foreign = PAGI::Simple::Session->new(secrets => [$OLD])->encode_value({ id => $sdoc->{id}, exp => time + 100 });
is(with_cookie($c7, '/peek', $foreign)->content, 'none', 'an id signed with another secret is not trusted');
is(with_cookie($c7, '/peek', $forged_id)->content, 2, 'one signed with the secret is (the check is meaningful)');
$store->set(stale => { count => 9 }, time - 1);
is(with_cookie($c7, '/peek', $mgr->encode_value({ id => 'stale', exp => time + 100 }))->content, 'none', 'an expired store entry is ignored');
ok(!defined $store->get('stale'), 'and dropped');
$r = with_cookie($c7, '/logout', $sid_cookie);
ok(!defined $store->get($sdoc->{id}), 'clearing deletes it from the store');

ok(!eval { PAGI::Simple::Session->new(secrets => ['short']) } && $@ =~ /at least 16/, 'short secrets are refused');
ok(!eval { PAGI::Simple::Session->new(secrets => [$NEW], colour => 1) } && $@ =~ /unknown option 'colour'/, 'unknown options are named');
ok(!eval { PAGI::Simple::Session->new(secrets => []) } && $@ =~ /'secrets' must be a non-empty list/, 'an empty secret list is refused');
my $nosess = PAGI::Simple->new;
$nosess->get('/' => sub ($c) { $c->session });
{
    my @w;
    local $SIG{__WARN__} = sub { push @w, @_ };
    $r = client($nosess)->get('/');
    like(join('', @w), qr/needs session secrets/, 'saying how to configure them');
}
is($r->status, 500, 'sessions without secrets are an error');

done_testing;

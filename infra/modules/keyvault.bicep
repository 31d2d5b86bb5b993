// Key Vault access for the app, deployed in the vault's resource group: a new vault or an existing
// one; Key Vault Secrets User for the app's identity on the vault or on each named secret; the
// Event Grid system topic on the vault (its subscriptions come later: infra/subscriptions.bicep);
// optionally the vault's audit log to Log Analytics.
@description('Vault name: an existing vault, or the one to create (kv-<token>).')
param name string

@description('True: create the vault. False: use the existing vault of that name in this resource group.')
param createVault bool

@description('Region of a new vault (an existing vault keeps its own; the system topic follows the vault).')
param location string

@description('Tags of the resources created here.')
param tags object

@description('Secrets the app may read (they must exist). Given: the role is granted on each secret. Empty: on the vault.')
param secretNames array = []

@description('Principal id of the app\'s user-assigned identity.')
param identityPrincipalId string

@description('Name of the Event Grid system topic on the vault (evgst-<token>, or the vault\'s existing one).')
param systemTopicName string

@description('Log Analytics workspace that receives the vault\'s audit log. Empty: no diagnostic setting.')
param logAnalyticsWorkspaceId string = ''

var keyVaultSecretsUser = '4633458b-17de-408a-b874-0445c86b69e6'

resource createdVault 'Microsoft.KeyVault/vaults@2023-07-01' = if (createVault) {
  #checkov:skip=CKV_AZURE_110:False positive: enablePurgeProtection is true below; checkov 3.3 does not read the properties of a conditional (if) resource (verified: the same resource without the condition passes).
  #checkov:skip=CKV_AZURE_42:False positive, as CKV_AZURE_110: soft delete (90 days) and purge protection are on below.
  #checkov:skip=CKV_AZURE_109:The vault firewall stays open (defaultAction Allow): Flex Consumption without VNet integration has no fixed outbound addresses; every call needs an Entra ID token and RBAC (no access policies).
  #checkov:skip=CKV_AZURE_189:Public network access stays enabled for the same reason as CKV_AZURE_109.
  name: name
  location: location
  tags: tags
  properties: {
    tenantId: tenant().tenantId
    sku: {
      family: 'A'
      name: 'standard'
    }
    enableRbacAuthorization: true
    enableSoftDelete: true
    softDeleteRetentionInDays: 90
    enablePurgeProtection: true
    publicNetworkAccess: 'Enabled'
    networkAcls: {
      defaultAction: 'Allow'
      bypass: 'AzureServices'
    }
  }
}

resource vault 'Microsoft.KeyVault/vaults@2023-07-01' existing = {
  name: name
}

resource secrets 'Microsoft.KeyVault/vaults/secrets@2023-07-01' existing = [for secretName in secretNames: {
  parent: vault
  name: secretName
}]

// Narrowest scope the parameters allow: each named secret, else the vault.
resource secretReaders 'Microsoft.Authorization/roleAssignments@2022-04-01' = [for (secretName, i) in secretNames: {
  name: guid(vault.id, secretName, identityPrincipalId, keyVaultSecretsUser)
  scope: secrets[i]
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', keyVaultSecretsUser)
    principalId: identityPrincipalId
    principalType: 'ServicePrincipal'
  }
  dependsOn: [
    createdVault
  ]
}]

resource vaultReader 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (empty(secretNames)) {
  name: guid(vault.id, identityPrincipalId, keyVaultSecretsUser)
  scope: vault
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', keyVaultSecretsUser)
    principalId: identityPrincipalId
    principalType: 'ServicePrincipal'
  }
  dependsOn: [
    createdVault
  ]
}

// One system topic per source: Key Vault events (SecretNewVersionCreated, SecretNearExpiry,
// SecretExpired). Its system-assigned identity writes dead-letters (deadLetterWithResourceIdentity).
resource systemTopic 'Microsoft.EventGrid/systemTopics@2022-06-15' = {
  name: systemTopicName
  location: createVault ? location : vault.location
  tags: tags
  identity: {
    type: 'SystemAssigned'
  }
  properties: {
    source: vault.id
    topicType: 'Microsoft.KeyVault.vaults'
  }
  dependsOn: [
    createdVault
  ]
}

resource auditLog 'Microsoft.Insights/diagnosticSettings@2021-05-01-preview' = if (!empty(logAnalyticsWorkspaceId)) {
  name: 'pbi-credential-healer-audit'
  scope: vault
  properties: {
    workspaceId: logAnalyticsWorkspaceId
    logs: [
      {
        categoryGroup: 'audit'
        enabled: true
      }
    ]
  }
  dependsOn: [
    createdVault
  ]
}

output vaultUri string = 'https://${name}${environment().suffixes.keyvaultDns}/'
output vaultId string = vault.id
output systemTopicName string = systemTopic.name
output systemTopicPrincipalId string = systemTopic.identity.principalId
